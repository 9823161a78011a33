"""Does the quickstart's tuned simulator obey its mode? Runs only the quickstart's world, simulator
and fidelity stages for a QuickstartConfig YAML (its ``sim:`` section is the tuning recipe) and
writes a small results file: per simulator row (the real engine's reference, the tuned simulator
without the noisy guard, and with it) the share of well-formed k-document outputs and of useful- and
noisy-mode outputs that hold a gold answer, on the held-out simulator queries; with ``sim.partial_queries``
two more rows measure the real engine and the tuned simulator on the held-out stub queries (does the
simulator follow the query?).

    python benchmarks/sim_miniworld.py -c configs/miniworld-sim.yaml -o runs/sim-miniworld \
        --copy-to docs/results/sim_miniworld.json

A rerun resumes: finished stages are skipped (delete ``<out>/sim/fidelity`` to measure again).
To measure the simulator the learning benchmark trains against, point both at one folder with the
same validation split (the simulator is tuned on the training questions less that split):

    python benchmarks/sim_miniworld.py -c configs/quickstart/miniworld-learning.yaml \
        -o runs/miniworld_learning --val-questions 100
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from zerosearch.cli_engine import USER_ERRORS, console, fail, named_progress

KEYS = ("simulator", "queries", "format_validity", "contains_useful", "contains_noisy",
        "controllability_gap", "fidelity", "doc_words", "latency_s")


def main(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML QuickstartConfig (its sim: "
                                                                      "section is the recipe)."),
    output_dir: str = typer.Option("runs/sim-miniworld", "--output-dir", "-o", help="Run folder (rerun = resume)."),
    copy_to: Optional[str] = typer.Option(None, "--copy-to", help="Also copy the results file there."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (SFT split, data order, "
                                                            "initialisation); default: the config's."),
    world_seed: Optional[int] = typer.Option(None, "--world-seed",
                                             help="Mini-world seed (another world: other names, facts, "
                                                  "questions); default: the config's."),
    val_questions: Optional[int] = typer.Option(None, "--val-questions",
                                                help="Training questions held out as a validation split "
                                                     "(the simulator is tuned on the rest); "
                                                     "benchmarks/miniworld_learning.py holds out 100. "
                                                     "Default: the config's."),
):
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from dataclasses import asdict

    from zerosearch.config import from_dict, load_yaml
    from zerosearch.quickstart import QuickstartConfig, stage_fidelity, stage_simulator, stage_world

    try:
        cfg = from_dict(QuickstartConfig, load_yaml(config) if config else {})
    except USER_ERRORS as err:
        fail(err)
    cfg.output_dir = output_dir
    cfg.sim.fidelity_guard = True  # the guarded row is part of what this benchmark reports
    if seed is not None:
        cfg.seed = seed
    if world_seed is not None:
        cfg.world.seed = world_seed
    if val_questions is not None:
        cfg.val_questions = val_questions
    progress, update = named_progress(34)
    started = time.time()
    with progress:
        stage_world(cfg)
        stage_simulator(cfg, update, log=console.print)
        tuned = time.time() - started
        stage_fidelity(cfg, update)
    rows = json.loads((Path(output_dir) / "sim" / "fidelity" / "fidelity.json").read_text())
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} logical CPUs, {platform.system()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sim": asdict(cfg.sim), "topk": cfg.topk, "seed": cfg.seed, "world_seed": cfg.world.seed,
        "val_questions": cfg.val_questions,
        # of this invocation (a resumed run skips finished stages)
        "seconds": {"until_tuned": round(tuned, 1), "total": round(time.time() - started, 1)},
        "rows": [{k: r.get(k) for k in KEYS} for r in rows],
    }
    out = Path(output_dir) / "sim_miniworld.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        console.print(row)
    if copy_to:
        Path(copy_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, copy_to)


if __name__ == "__main__":
    typer.run(main)
