"""How evaluated policies searched, by hop count: searches per question, queries that keep a name
of the question, queries that found nothing, and follow-up queries that repeat an earlier one
(:func:`zerosearch.learning.habits_of`). For the question behind the learning issue's "more than one
search" target: does a policy's second search look for something new?

    python benchmarks/query_habits.py runs/learning/runs/warmup-10/eval-test/predictions/test.jsonl \\
        --questions runs/learning/world/test.jsonl [--json out.json]
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from zerosearch.cli_engine import console, fail
from zerosearch.jsonl import strict_rows
from zerosearch.learning import habits_of


def habits_by_hops(predictions: Path, questions: Path) -> dict[str, dict]:
    """``habits_of`` and searches per question for all predictions and per hop count."""
    hops = {}
    for line, r in strict_rows(questions):
        try:
            hops[str(r["id"])] = r["metadata"]["hops"]
        except (KeyError, TypeError):
            raise ValueError(f"{questions}:{line}: no id or metadata.hops (a mini-world question file?)") from None
    rows = [r for _, r in strict_rows(predictions)]
    if not rows:
        raise ValueError(f"{predictions} holds no predictions")
    for key in ("id", "question", "stats"):
        lacking = [i for i, r in enumerate(rows, 1) if key not in r]
        if lacking:
            raise ValueError(f"{predictions}: prediction {lacking[0]} has no {key!r} (a `zerosearch eval` "
                             "predictions file?)")
    missing = [r["id"] for r in rows if str(r["id"]) not in hops]
    if missing:
        raise ValueError(f"{predictions}: {len(missing)} predictions name no question of {questions} "
                         f"(first: {missing[0]!r})")
    for r in rows:
        r["hops"] = hops[str(r["id"])]
    groups = {"all": rows}
    for h in sorted({r["hops"] for r in rows}):
        groups[f"{h}-hop"] = [r for r in rows if r["hops"] == h]
    return {name: {"n": len(g), "searches": sum(r["stats"]["searches"] for r in g) / len(g), **habits_of(g)}
            for name, g in groups.items()}


def main(predictions: list[Path] = typer.Argument(..., help="Prediction files of `zerosearch eval` "
                                                  "(<eval folder>/predictions/<dataset>.jsonl)."),
         questions: Path = typer.Option(..., "--questions", help="The mini-world question file they "
                                        "answered (world/test.jsonl or world/val.jsonl): hop counts."),
         json_out: Path = typer.Option(None, "--json", help="Also write the numbers here.")):
    try:
        table = {str(p): habits_by_hops(p, questions) for p in predictions}
    except (OSError, ValueError, KeyError) as err:
        fail(err)
    cell = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    console.print("| predictions | questions | n | searches / q | queries naming the entity (%) | "
                  "queries finding nothing (%) | follow-up queries repeating an earlier one (%) |")
    console.print("|---|---|---|---|---|---|---|")
    for path, groups in table.items():
        for name, g in groups.items():
            console.print(f"| {path} | {name} | {g['n']} | {g['searches']:.2f} | {cell(g['queries_with_name'], 0)} | "
                          f"{cell(g['empty_results'], 0)} | {cell(g['repeated_queries'], 0)} |")
    if json_out:
        json_out.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]), "results": table},
                                       indent=2))


if __name__ == "__main__":
    typer.run(main)
