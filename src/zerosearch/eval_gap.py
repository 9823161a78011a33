"""The sim-to-real gap as numbers: one policy evaluated with a simulated and with a real engine.

Given two ``zerosearch eval`` output folders of the same policy (same model, method and rollout
settings) on the same questions, one run searching a simulated engine and one a real engine, it
joins the predictions by (dataset, question id) and reports per dataset and over all shared
questions:

- ``em_sim`` / ``em_real``: strict exact match of each run;
- ``em_gap``: ``em_sim - em_real`` (positive: the simulator flatters the policy);
- ``agreement``: how often the two runs give the same answer after answer normalisation (two
  missing answers agree; one missing answer disagrees).

Questions present in only one run are left out and counted (``only_sim``, ``only_real``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zerosearch.jsonl import read_finished
from zerosearch.rewards import exact_match, normalize_answer


def read_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]]]:
    """An eval output folder's run.json and its predictions, ``{dataset: {id: record}}``."""
    folder = Path(folder)
    meta_path = folder / "run.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found (is {folder} an eval output folder?)")
    predictions = {p.stem: {r["id"]: r for r in read_finished(p)}
                   for p in sorted((folder / "predictions").glob("*.jsonl"))}
    return json.loads(meta_path.read_text()), predictions


def _same_answer(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return normalize_answer(a) == normalize_answer(b)


def _summary(pairs: list[tuple[dict, dict]]) -> dict[str, float]:
    n = len(pairs)
    em_sim = sum(exact_match(s["prediction"], s["golden_answers"]) for s, _ in pairs) / n
    em_real = sum(exact_match(r["prediction"], r["golden_answers"]) for _, r in pairs) / n
    agree = sum(_same_answer(s["prediction"], r["prediction"]) for s, r in pairs) / n
    return {"n": n, "em_sim": em_sim, "em_real": em_real, "em_gap": em_sim - em_real,
            "agreement": agree}


def sim_real_gap(sim_dir: str | Path, real_dir: str | Path) -> dict[str, Any]:
    """EM gap and answer agreement between a simulated-engine run and a real-engine run."""
    sim_meta, sim = read_run(sim_dir)
    real_meta, real = read_run(real_dir)
    differ = [k for k in ("model", "method", "rollout") if sim_meta.get(k) != real_meta.get(k)]
    if differ:
        raise ValueError(f"{sim_dir} and {real_dir} differ in {', '.join(differ)}: the gap needs one "
                         "policy evaluated the same way with two engines")
    datasets: dict[str, Any] = {}
    every: list[tuple[dict, dict]] = []
    for name in sorted(set(sim) & set(real)):
        shared = [i for i in sim[name] if i in real[name]]
        if not shared:
            continue
        pairs = [(sim[name][i], real[name][i]) for i in shared]
        every += pairs
        datasets[name] = {**_summary(pairs), "only_sim": len(sim[name]) - len(shared),
                          "only_real": len(real[name]) - len(shared)}
    if not every:
        raise ValueError(f"{sim_dir} and {real_dir} share no questions (same datasets and ids?)")
    return {"sim": str(sim_dir), "real": str(real_dir), "model": sim_meta.get("model"),
            "sim_engine": sim_meta.get("engine"), "real_engine": real_meta.get("engine"),
            "datasets": datasets, "all": _summary(every)}


def gap_table(gap: dict[str, Any]) -> str:
    """A markdown table of :func:`sim_real_gap` (percentages)."""
    lines = ["| dataset | n | EM sim | EM real | EM gap | agreement |", "|---|---|---|---|---|---|"]
    rows = list(gap["datasets"].items()) + [("all", gap["all"])]
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {100 * s['em_sim']:.1f} | {100 * s['em_real']:.1f} | "
                     f"{100 * s['em_gap']:+.1f} | {100 * s['agreement']:.1f} |")
    return "\n".join(lines) + "\n"
