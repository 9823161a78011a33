"""Put the arms of learning-benchmark runs collected apart into one results file.

The benchmark adds arms and seeds to one output folder by itself; this is for runs that could not
share a folder (a folder lost between sessions, arms run on different machines). The parts must
come from one starting point (its evaluation numbers equal) and one recipe (settings equal apart
from the seeds); each arm keeps its own seeds, and ``sources`` in the merged file names the command,
machine and date behind every part.

    python benchmarks/merge_learning_results.py docs/results/learning_zerosearch_stubs.json \\
        docs/results/learning_bm25_same_start.json -o runs/learning_merged
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from zerosearch.cli_engine import console, fail
from zerosearch.learning import LearningConfig, merge_results, write_results


def main(files: list[Path] = typer.Argument(..., help="results.json files of the learning benchmark."),
         output_dir: Path = typer.Option(..., "--output-dir", "-o",
                                         help="Folder for the merged results.json, results.md and PNGs."),
         copy_to: str = typer.Option(None, "--copy-to", help="Also copy the merged results.json here.")):
    parts = []
    for path in files:
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            fail(f"cannot read {path}: {err}")
    try:
        merged = merge_results(parts, shlex.join(["python", *sys.argv]))
    except (ValueError, KeyError) as err:
        fail(f"cannot merge: {err}")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_results(merged, output_dir, LearningConfig(copy_to=copy_to))
    print((output_dir / "results.md").read_text())
    console.print(f"[green]merged:[/] {output_dir / 'results.json'}")


if __name__ == "__main__":
    typer.run(main)
