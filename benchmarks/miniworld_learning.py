"""The paper's central claim at small scale: does a policy trained against a *simulated* engine
(with the noise curriculum) search as well as one trained against the real engine?

Trains the same starting policy three ways on the same budget (steps x questions x rollouts), on the
mini-world, and evaluates each on held-out questions with the real BM25 engine:

- ``zerosearch``:      the fine-tuned simulator, noise curriculum p_start -> p_end;
- ``sim-fixed-noise``: the same simulator with a fixed noise probability equal to the curriculum's
                       mean over the run (same expected number of noisy searches, no schedule);
- ``bm25``:            the real BM25 engine (Search-R1 style; no noise control).

The simulator, the mini-world and the optional format warm-up are the quickstart's stages
(``zerosearch.quickstart``), made once and shared. ``--warmup both`` also trains every arm from the
untouched policy (``--base-arms`` picks which), so the table shows results with and without the
warm-up. Every stage resumes.

    python benchmarks/miniworld_learning.py   # about 70 minutes on 2 cores (README table)

Writes ``<output_dir>/results.md`` and ``results.json`` (and reward curves ``reward.png``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from zerosearch.cli_engine import named_progress
from zerosearch.curriculum import CurriculumConfig
from zerosearch.jsonl import read_finished
from zerosearch.quickstart import (QuickstartConfig, RLStageConfig, bm25_config, check_same_config,
                                   rl_train_config, simulator_config, stage_eval, stage_rl,
                                   stage_simulator, stage_warmup, stage_world)
from zerosearch.report import eval_by_hops, plot_reward, rl_curve


def mean_noise(curriculum: CurriculumConfig, steps: int) -> float:
    return sum(curriculum.at(i, steps) for i in range(steps)) / steps


def main(
    output_dir: str = typer.Option("runs/miniworld_learning", "--output-dir", "-o"),
    steps: int = typer.Option(20, "--steps", help="RL steps per arm."),
    prompts_per_step: int = typer.Option(2, "--prompts-per-step"),
    num_generations: int = typer.Option(4, "--num-generations"),
    learning_rate: float = typer.Option(5e-6, "--learning-rate"),
    eval_questions: int = typer.Option(100, "--eval-questions"),
    warmup: str = typer.Option("both", "--warmup", help="yes, no or both."),
    warmup_steps: int = typer.Option(24, "--warmup-steps"),
    arms: str = typer.Option("zerosearch,sim-fixed-noise,bm25", "--arms"),
    base_arms: Optional[str] = typer.Option("zerosearch", "--base-arms",
                                            help="Arms trained from the untouched policy with --warmup "
                                                 "both/no (empty: all of --arms)."),
):
    if warmup not in ("yes", "no", "both"):
        raise typer.BadParameter("--warmup must be yes, no or both")
    cfg = QuickstartConfig(output_dir=output_dir, eval_questions=eval_questions,
                           rl=RLStageConfig(steps=steps, prompts_per_step=prompts_per_step,
                                            num_generations=num_generations, learning_rate=learning_rate))
    cfg.warmup.steps = warmup_steps
    progress, update = named_progress(28)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_same_config(cfg)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with progress:
        stage_world(cfg)
        stage_simulator(cfg, update, log=lambda m: None)
        starts = {}
        if warmup in ("yes", "both"):
            starts["warm-up"] = stage_warmup(cfg, update, log=lambda m: None)
        if warmup in ("no", "both"):
            starts["no warm-up"] = cfg.policy
        timings["shared stages"] = time.perf_counter() - started
        fixed = mean_noise(cfg.rl.curriculum, steps)
        engines = {
            "zerosearch": (simulator_config(cfg), cfg.rl.curriculum),
            "sim-fixed-noise": (simulator_config(cfg), CurriculumConfig(p_start=fixed, p_end=fixed,
                                                                         enabled=False)),
            "bm25": (bm25_config(cfg), cfg.rl.curriculum),
        }
        rows, curves = [], {}
        for start_name, start_model in starts.items():
            tag = "warmup" if start_name == "warm-up" else "base"
            evals = [("untrained", cfg.policy)] if tag == "base" else [("warm-up only", start_model)]
            for arm in (arms if tag == "warmup" else base_arms or arms).split(","):
                if arm not in engines:
                    raise typer.BadParameter(f"unknown arm {arm!r}; choose from {', '.join(engines)}")
                engine, curriculum = engines[arm]
                train_cfg = rl_train_config(cfg, start_model, engine, curriculum, out / "rl" / f"{arm}-{tag}")
                t0 = time.perf_counter()
                final = stage_rl(train_cfg, update, name=f"RL {arm} ({start_name})", log=lambda m: None)
                timings[f"RL {arm} ({start_name})"] = time.perf_counter() - t0
                curves[f"{arm} ({start_name})"] = rl_curve(out / "rl" / f"{arm}-{tag}" / "metrics.jsonl")
                evals.append((arm, final))
            for name, model in evals:
                folder = f"{name.replace(' ', '-')}-{tag}"
                t0 = time.perf_counter()
                report = stage_eval(cfg, folder, model, "search", update, out_root=out / "eval",
                                    log=lambda m: None)
                timings[f"eval {folder}"] = time.perf_counter() - t0
                files = sorted((out / "eval" / folder / "predictions").glob("*.jsonl"))
                hops = eval_by_hops(files[0], out / "world" / "test.jsonl")
                a = report["average"]
                rows.append({"start": start_name, "policy": name, "em": 100 * a["em"], "f1": 100 * a["f1"],
                             "em_by_hops": hops, "searches": a["searches"],
                             "no_answer": 100 * a["extraction_failure"]})
    plot_reward(curves, out / "reward.png")
    fixed_note = f"{fixed:.3f}"
    lines = [
        "# Mini-world learning benchmark", "",
        f"Policy `{cfg.policy}`; {steps} GRPO steps x {prompts_per_step} questions x "
        f"{num_generations} rollouts per arm, lr {learning_rate}, F1 reward; evaluation on "
        f"{eval_questions} held-out questions with the real BM25 engine, greedy. Curriculum "
        f"{cfg.rl.curriculum.p_start} -> {cfg.rl.curriculum.p_end} (base {cfg.rl.curriculum.base}); "
        f"fixed-noise arm p = {fixed_note}. Format warm-up: {warmup_steps} supervised steps "
        "on well-formed traces (question as query, real BM25 documents, gold answer).", "",
        "| start | policy | EM | F1 | EM 1-hop | EM 2-hop | EM 3-hop | searches / q | no answer (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h = r["em_by_hops"]
        lines.append(f"| {r['start']} | {r['policy']} | {r['em']:.1f} | {r['f1']:.1f} | "
                     + " | ".join(f"{h.get(k, float('nan')):.1f}" for k in (1, 2, 3))
                     + f" | {r['searches']:.2f} | {r['no_answer']:.0f} |")
    lines += ["", "RL cost per arm (from each run's metrics.jsonl, so a resumed benchmark still reports the "
              "training it did):", "", "| arm | steps | mean s / step | total s |", "|---|---|---|---|"]
    for name in sorted(p.name for p in (out / "rl").iterdir() if (p / "metrics.jsonl").exists()):
        secs = [r["time/step_s"] for r in read_finished(out / "rl" / name / "metrics.jsonl")
                if "time/step_s" in r]
        if secs:
            lines.append(f"| {name} | {len(secs)} | {sum(secs) / len(secs):.0f} | {sum(secs):.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "timings": timings,
                                                   "fixed_noise": fixed}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
