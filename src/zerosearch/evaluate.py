"""Evaluation on the seven QA benchmarks with the paper's baselines, resumable and deterministic.

Methods (all through :func:`zerosearch.rollout.run_rollouts`, the code training uses):

- ``search``: the multi-turn agent with any engine;
- ``direct``: answer at once; ``cot``: reason, then answer (no retrieval);
- ``rag``: retrieve top-k with the question once, put the documents in the prompt, answer.

Metrics per dataset and averaged: strict EM (the paper's headline), cover-EM, F1, ROUGE-L, searches
and turns per question, and the answer-extraction failure rate (no ``<answer>`` at all). Predictions
are appended per batch to ``<out>/predictions/<dataset>.jsonl`` (a batch takes questions from every
dataset in turn, ``pool_datasets``, and appends to each of their files); a rerun skips finished rows
(a half-written last line from a kill is dropped), so nothing is duplicated or lost. Decoding is
greedy by default, so a resumed run equals an uninterrupted one (up to floating-point rounding where a
kill moved the batch boundaries); with sampling, each batch is seeded from (seed, dataset, its first
question), which reproduces a run but not across a resume that moved the batch boundaries.
Simulated engines get no noise here: every search is in useful mode.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from zerosearch.engines.base import Engine, SearchRequest
from zerosearch.jsonl import append, read_finished
from zerosearch.protocol import document_line, format_documents
from zerosearch.qa import BENCHMARKS, load_qa
from zerosearch.rewards import cover_em, exact_match, f1_score, normalize_answer
from zerosearch.rollout import RolloutConfig, Row, Trajectory, run_rollouts

METHODS = ("search", "direct", "cot", "rag")
METRIC_KEYS = ("em", "cover_em", "f1", "rouge_l", "response_cover_em", "searches", "turns",
               "extraction_failure")

DIRECT_INSTRUCTION = (
    "Answer the given question directly. Give only the answer inside <answer> and </answer>, "
    "without explanations. For example, <answer> Beijing </answer>. ")
COT_INSTRUCTION = (
    "Answer the given question. First think step by step inside <think> and </think>, then give "
    "only the final answer inside <answer> and </answer>. For example, <answer> Beijing </answer>. ")
RAG_INSTRUCTION = (
    "Answer the given question using the documents below. You may think inside <think> and "
    "</think> first, then give only the answer inside <answer> and </answer>. For example, "
    "<answer> Beijing </answer>.\n\n<information>{documents}</information>\n\n")


@dataclass
class EvalConfig:
    """One evaluation run (``zerosearch eval``)."""

    model: str = "embedded:smollm2-135m-instruct"
    """Policy model."""
    method: str = "search"
    """search, direct, cot or rag."""
    datasets: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    """Benchmark names (folders of ``data_dir``) or paths to QA files."""
    data_dir: str | None = None
    """Folder holding ``<dataset>/test.jsonl`` (FlashRAG) or ``<dataset>/test.parquet``; needed
    when ``datasets`` holds names rather than file paths."""
    split: str = "test"
    """Split file name inside each dataset folder."""
    limit: int | None = None
    """Evaluate the first N questions of each dataset."""
    batch_size: int = 32
    """Questions per batch (one generate call per turn)."""
    pool_datasets: bool = True
    """Fill batches with the questions of every dataset in turn, rather than batching each dataset
    alone: the last, part-filled batch of each dataset (all of them, with ``limit`` below the batch
    size) decodes at a fraction of the rows its steps cost."""
    seed: int = 0
    """Seed for policy sampling (``rollout.temperature > 0``), set per batch."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.0))
    """Turns and budgets (greedy decoding by default)."""
    device: str = "auto"
    """cpu, cuda or auto."""
    dtype: str = "auto"
    """auto (bf16 on CUDA and on CPUs with native bf16, AMX or AVX512-BF16; fp32 elsewhere),
    float32, bfloat16."""
    label: str | None = None
    """Row name in tables (default ``method / model``)."""


def resolve_dataset(name: str, data_dir: str | Path | None, split: str) -> Path:
    """A dataset name or path → its file, or an error listing what exists."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if data_dir is None:
        raise FileNotFoundError(f"dataset {name!r} is neither a file nor, without --data-dir, a name "
                                f"to look up: pass --data-dir FOLDER (holding {name}/{split}.jsonl)")
    root = Path(data_dir).expanduser()
    candidate = root / name
    for suffix in (".jsonl", ".parquet"):
        if (candidate / f"{split}{suffix}").exists():
            return candidate / f"{split}{suffix}"
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    where = f"{root} holds: {', '.join(present)}" if present else f"{root} does not exist or is empty"
    raise FileNotFoundError(f"unknown dataset {name!r}: no {split}.jsonl/.parquet under {candidate} "
                            f"({where}; the standard names are {', '.join(BENCHMARKS)})")


def rouge_l(prediction: str | None, golds: Sequence[str]) -> float:
    """ROUGE-L F1 on normalised tokens, the maximum over the gold answers."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        if not pred or not ref:
            continue
        prev = [0] * (len(ref) + 1)
        for p in pred:  # longest common subsequence, one row at a time
            cur = [0]
            for j, r in enumerate(ref):
                cur.append(prev[j] + 1 if p == r else max(prev[j + 1], cur[j]))
            prev = cur
        lcs = prev[-1]
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Every metric of one stored prediction, derived from the record itself (so a rerun over a
    finished folder recomputes the tables without generating again).

    ``response_cover_em`` is deliberately separate and lenient: a gold answer anywhere in the
    generated response, with no answer extraction. It is never mixed into EM.
    """
    golds, pred = record["golden_answers"], record["prediction"]
    return {"em": exact_match(pred, golds), "cover_em": cover_em(pred, golds),
            "f1": f1_score(pred, golds), "rouge_l": rouge_l(pred, golds),
            "response_cover_em": cover_em(record.get("response") or "", golds),
            "searches": record["stats"]["searches"], "turns": record["stats"]["turns"],
            "extraction_failure": float(pred is None)}


def to_record(traj: Trajectory) -> dict[str, Any]:
    record = {"id": str(traj.row.id), "question": traj.row.question,
              "golden_answers": traj.row.golden_answers, "prediction": traj.answer,
              "stats": traj.stats(), "response": traj.response}
    record["metrics"] = record_metrics(record)
    return record


#: Settings of run.json that change predictions: a resumed run must match all of them. The engine
#: is compared by its description without where its index is stored (that changes nothing); the
#: batch size and pooling (which rows share a batch) matter with sampling (each batch is seeded)
#: and, through padding and the shared prefix's rounding, even greedily.
_PREDICTION_SETTINGS = ("model", "method", "seed", "rollout", "engine", "dtype", "batch_size",
                        "pool_datasets")
_BEFORE_THE_SETTING = {"pool_datasets": False}
"""What a run.json written before a setting existed ran with."""


def _comparable(key: str, value: Any) -> Any:
    if key == "engine" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("index", "index_path")}
    return value


def _batch_seed(seed: int, dataset: str, row_id: Any) -> int:
    return zlib.crc32(f"{seed}|{dataset}|{row_id}".encode())


def rag_instructions(rows: Sequence[Row], engine: Engine, topk: int) -> list[str]:
    """The RAG prompt of each row: top-k documents retrieved with the question itself."""
    results = engine.search([SearchRequest(r.question, r.question, list(r.golden_answers), topk=topk,
                                           mode="useful", row_id=r.id) for r in rows])
    out = []
    for result in results:
        if result.error:
            raise RuntimeError(f"retrieval failed for {result.query!r}: {result.error}")
        docs = [document_line(d.title, d.text) for d in result.documents]
        out.append(RAG_INSTRUCTION.format(documents=format_documents(docs) or "(no documents)"))
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    n = len(records)
    metrics = [record_metrics(r) for r in records]
    summary = {k: sum(m[k] for m in metrics) / n if n else 0.0 for k in METRIC_KEYS}
    summary["n"] = n
    return summary


def evaluate(cfg: EvalConfig, generator, tokenizer, engine: Engine | None, out_dir: str | Path,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation; write predictions, results.json, table.md and chart.png."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.method in ("search", "rag") and engine is None:
        raise ValueError(f"method {cfg.method} needs a search engine")
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    meta_path = out / "run.json"
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {cfg.limit}")
    meta = {"model": cfg.model, "method": cfg.method, "seed": cfg.seed,
            "rollout": asdict(cfg.rollout), "engine": engine.describe() if engine else None,
            "dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "pool_datasets": cfg.pool_datasets and len(cfg.datasets) > 1}  # one dataset: no pooling
    if meta_path.exists():
        previous = {**_BEFORE_THE_SETTING, **json.loads(meta_path.read_text())}
        changed = [k for k in _PREDICTION_SETTINGS
                   if _comparable(k, previous.get(k)) != _comparable(k, meta[k])]
        if changed:
            was = "; ".join(f"{k}: {_comparable(k, previous.get(k))} then {_comparable(k, meta[k])}"
                            for k in changed)
            raise ValueError(f"{out} holds a run with a different {', '.join(changed)} ({was}); use "
                             "another --output-dir (resuming would mix two runs)")
    meta_path.write_text(json.dumps(meta, indent=2))
    files = {name: resolve_dataset(name, cfg.data_dir, cfg.split) for name in cfg.datasets}
    rollout_cfg = cfg.rollout if cfg.method == "search" else RolloutConfig(
        **{**asdict(cfg.rollout), "max_turns": 0})
    instruction = {"direct": DIRECT_INSTRUCTION, "cot": COT_INSTRUCTION}.get(cfg.method)
    rows_of: dict[str, list[Row]] = {}
    done_of: dict[str, list[dict[str, Any]]] = {}
    named: dict[str, str] = {}  # key -> the name as given (batch seeds use it)
    todos: list[list[tuple[str, Row]]] = []
    for name, path in files.items():
        key = Path(name).stem if Path(name).exists() else name  # a QA file is named by its stem
        if key in named:
            raise ValueError(f"datasets {named[key]!r} and {name!r} would share predictions/{key}.jsonl: "
                             "pass files with different names")
        named[key] = name
        rows_of[key] = load_qa(path, limit=cfg.limit)
        done_of[key] = read_finished(out / "predictions" / f"{key}.jsonl")
        finished = {r["id"] for r in done_of[key]}
        todos.append([(key, r) for r in rows_of[key] if str(r.id) not in finished])
        if progress:
            progress(key, len(rows_of[key]) - len(todos[-1]), len(rows_of[key]))
    queues = [[item for todo in todos for item in todo]] if cfg.pool_datasets else todos
    for queue in queues:
        for start in range(0, len(queue), cfg.batch_size):
            batch = queue[start:start + cfg.batch_size]
            first_key, first_row = batch[0]
            records = _rollout_batch(cfg, [row for _, row in batch], named[first_key], generator,
                                     tokenizer, engine, rollout_cfg, instruction)
            for key in dict.fromkeys(k for k, _ in batch):  # each dataset of the batch, in order
                mine = [r for (k, _), r in zip(batch, records) if k == key]
                append(out / "predictions" / f"{key}.jsonl", mine)
                done_of[key].extend(mine)
                if progress:
                    progress(key, len(done_of[key]), len(rows_of[key]))
    results: dict[str, Any] = {}
    for key, rows in rows_of.items():
        order = {str(r.id): i for i, r in enumerate(rows)}
        done = sorted((r for r in done_of[key] if r["id"] in order), key=lambda r: order[r["id"]])
        results[key] = summarise(done)
    average = {k: sum(v[k] for v in results.values()) / len(results) for k in METRIC_KEYS}
    label = cfg.label or f"{cfg.method} / {cfg.model}"
    report = {"label": label, "model": cfg.model, "method": cfg.method, "engine": meta["engine"],
              "limit": cfg.limit, "datasets": results, "average": average}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    write_table([report], out / "table.md")
    write_chart([report], out / "chart.png")
    return report


def _rollout_batch(cfg: EvalConfig, rows: list[Row], dataset: str, generator, tokenizer,
                   engine: Engine | None, rollout_cfg: RolloutConfig,
                   instruction: str | None) -> list[dict[str, Any]]:
    """The prediction records of one batch (of one or several datasets; ``dataset`` names its first
    row's, which seeds the batch's sampling)."""
    import torch  # here, so that the CLI can read EvalConfig without loading torch

    instructions = None
    if cfg.method == "rag":
        instructions = rag_instructions(rows, engine, cfg.rollout.topk)
    elif instruction:
        instructions = [instruction] * len(rows)
    torch.manual_seed(_batch_seed(cfg.seed, dataset, rows[0].id))
    trajs = run_rollouts(rows, generator, tokenizer, engine if cfg.method == "search" else None,
                         rollout_cfg, instructions=instructions,
                         eos_token_ids=[tokenizer.eos_token_id])
    return [to_record(t) for t in trajs]


_TABLES = (("em", "Strict exact match (x100), the paper's headline metric"),
           ("f1", "F1 of the extracted answer (x100)"),
           ("response_cover_em", "Gold answer anywhere in the response, no answer extraction (x100; "
                                 "lenient, for models that do not use the answer tags)"),
           ("extraction_failure", "Responses with no <answer> at all (%)"))


def write_table(reports: Sequence[dict[str, Any]], path: str | Path) -> str:
    """Markdown tables shaped like the paper's: rows = method / model, columns = datasets + average;
    strict EM first, then F1, the lenient response match and the extraction-failure rate."""
    names: list[str] = []
    for report in reports:
        names += [n for n in report["datasets"] if n not in names]
    lines = []
    for key, title in _TABLES:
        lines += [f"**{title}**", "", "| Method | " + " | ".join(names) + " | Avg. |",
                  "|" + "---|" * (len(names) + 2)]
        for report in reports:
            cells = [f"{100 * report['datasets'][n].get(key, 0):.1f}" if n in report["datasets"]
                     else "–" for n in names]
            lines.append(f"| {report['label']} | " + " | ".join(cells)
                         + f" | {100 * report['average'].get(key, 0):.1f} |")
        lines.append("")
    lines.append("Questions evaluated per dataset: "
                 + ", ".join(f"{n} {reports[0]['datasets'][n]['n']}" for n in names
                             if n in reports[0]["datasets"]) + ".")
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def write_chart(reports: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Grouped bar chart of EM per dataset (one bar colour per report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    for report in reports:
        names += [n for n in report["datasets"] if n not in names]
    names.append("average")
    width = 0.8 / max(len(reports), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.6))
    for i, report in enumerate(reports):
        values = [100 * report["datasets"][n]["em"] if n in report["datasets"] else 0 for n in names[:-1]]
        values.append(100 * report["average"]["em"])
        ax.bar([x + i * width for x in range(len(names))], values, width, label=report["label"])
    ax.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylabel("exact match (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(out_dirs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Merge several runs' results.json into one table (and chart, when ``out`` is given)."""
    reports = []
    for directory in out_dirs:
        path = Path(directory) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (is {directory} an eval output folder?)")
        reports.append(json.loads(path.read_text()))
    target = Path(out) if out else None
    if target:
        target.mkdir(parents=True, exist_ok=True)
        write_chart(reports, target / "chart.png")
    return write_table(reports, (target / "table.md") if target else os.devnull)
