"""The mini-world learning benchmark: the same starting policy trained by every arm (engine,
simulator, noise schedule, algorithm, loss masking) with every seed, on the same budget, each run
evaluated with the real BM25 engine on the test questions and on a validation split of the training
questions. The arms, starting points and layout are in :mod:`zerosearch.learning`; the flags and
outputs are described in ``docs/learning.md``.

    python benchmarks/miniworld_learning.py --quick              # zerosearch and bm25, seeds 0,1,2
    python benchmarks/miniworld_learning.py                      # every arm, seeds 0,1,2
    python benchmarks/miniworld_learning.py --arms zerosearch --seeds 0 --eval-split val --learning-rate 3e-5
    python benchmarks/miniworld_learning.py --start warmup:8 --start-only --eval-split val   # choose a start

The defaults are the recipe: ``configs/quickstart/miniworld-learning.yaml`` (simulator tuning and the
``rl`` section) from a 10-step format warm-up (``--start warmup:10``).

Writes ``<output-dir>/results.md``, ``results.json``, ``reward.png`` and ``searches.png``; a rerun
resumes every stage and run, and a rerun with more arms or seeds adds runs beside the finished ones.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from zerosearch.cli_engine import USER_ERRORS, console, fail, named_progress
from zerosearch.learning import ARMS, QUICK_ARMS, RECIPE_START, SPLITS, STARTS, LearningConfig, run

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "miniworld-learning.yaml"
"""The benchmark's recipe: the simulator tuning and the RL section (the quickstart's defaults are the
20-minute demo's, not this)."""
D = LearningConfig(config=str(RECIPE), start=RECIPE_START)


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _seeds(value: str) -> list[int]:
    try:
        return [int(v) for v in _list(value)]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes integers separated by commas, got {value!r}") from None


def main(
    output_dir: str = typer.Option(D.output_dir, "--output-dir", "-o", help="Run folder (rerun = resume)."),
    config: Optional[str] = typer.Option(D.config, "--config", "-c",
                                         help="YAML QuickstartConfig: policy, simulator recipe, world, "
                                              "budgets, rl section (default: the repository's recipe)."),
    arms: Optional[str] = typer.Option(None, "--arms", help=f"Comma-separated arms: {', '.join(ARMS)} "
                                                            "(default: all)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated training seeds (default: "
                                                              + ",".join(map(str, D.seeds)) + ")."),
    quick: bool = typer.Option(False, "--quick", help=f"The main arms ({', '.join(QUICK_ARMS)}), seeds "
                                                      "0,1,2."),
    start: str = typer.Option(D.start, "--start", help=f"Starting point: {', '.join(STARTS)} "
                                                       "(warmup:N = N warm-up steps)."),
    steps: Optional[int] = typer.Option(D.steps, "--steps", help="RL steps per run (default: config rl.training.max_steps)."),
    prompts_per_step: Optional[int] = typer.Option(D.prompts_per_step, "--prompts-per-step",
                                                   help="Questions per step (default: config)."),
    num_generations: Optional[int] = typer.Option(D.num_generations, "--num-generations",
                                                  help="Rollouts per question (default: config)."),
    learning_rate: Optional[float] = typer.Option(D.learning_rate, "--learning-rate",
                                                  help="Policy learning rate (default: config)."),
    temperature: Optional[float] = typer.Option(D.temperature, "--temperature",
                                                help="Sampling temperature of the training rollouts "
                                                     "(default: config rl.temperature)."),
    beta: Optional[float] = typer.Option(D.beta, "--beta",
                                         help="KL coefficient to the starting policy (default: config rl.algorithm.beta)."),
    eval_questions: int = typer.Option(D.eval_questions, "--eval-questions",
                                       help="Test questions per evaluation (0: all)."),
    val_questions: int = typer.Option(D.val_questions, "--val-questions",
                                      help="Training questions held out as the validation split."),
    eval_split: str = typer.Option(",".join(D.eval_splits), "--eval-split",
                                   help=f"Splits to evaluate on: {', '.join(SPLITS)} (comma-separated)."),
    sim_gap: bool = typer.Option(D.sim_gap, "--sim-gap/--no-sim-gap",
                                 help="Also evaluate simulated arms with their simulator: the "
                                      "sim-to-real EM gap and answer agreement per seed."),
    copy_to: Optional[str] = typer.Option(D.copy_to, "--copy-to",
                                          help="Also copy results.json here (docs/results/miniworld_learning.json)."),
    start_only: bool = typer.Option(D.start_only, "--start-only",
                                    help="Make and evaluate the starting point only (no simulator, no RL)."),
):
    if quick and (arms or seeds):
        raise typer.BadParameter("--quick sets the arms and seeds; leave out --arms and --seeds")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    lc = LearningConfig(
        output_dir=output_dir, config=config,
        arms=list(QUICK_ARMS) if quick else (_list(arms) if arms else list(D.arms)),
        seeds=[0, 1, 2] if quick else (_seeds(seeds) if seeds else list(D.seeds)),
        start=start, steps=steps, prompts_per_step=prompts_per_step, num_generations=num_generations,
        learning_rate=learning_rate, temperature=temperature, beta=beta, eval_questions=eval_questions,
        val_questions=val_questions, eval_splits=_list(eval_split), sim_gap=sim_gap, copy_to=copy_to,
        start_only=start_only)
    progress, update = named_progress(28)
    try:
        with progress:
            run(lc, update, command=shlex.join(["python", *sys.argv]))
    except USER_ERRORS as err:
        fail(err)
    results = os.path.join(output_dir, "results.md")
    print(open(results, encoding="utf-8").read())
    console.print(f"[green]results:[/] {results}")


if __name__ == "__main__":
    typer.run(main)
