"""`zerosearch sim fidelity`: how well a simulator stands in for the real engine, on held-out queries.

For every held-out query each simulator writes top-k documents in useful mode and in noisy mode;
the real engine's documents for the same query are the reference. Measured per simulator:

- ``format_validity``: outputs with exactly k well-formed documents (>= 3 words each);
- ``contains_useful`` / ``contains_noisy``: a gold answer occurs in the documents; their difference
  is the *controllability gap* (useful documents should help, noisy ones should not);
- ``judge_useful`` / ``judge_noisy`` (with a judge): judged to answer the query;
- ``doc_words``: mean words per document (the real engine's too);
- ``overlap``: unigram F1 between the simulator's useful documents and the real documents;
- ``latency_s`` and ``words_per_query`` (generation cost per query, at ``batch_size`` queries a call).

Every output (mode, query, gold answers, documents, whether they hold an answer) is kept in
``outputs.jsonl`` beside the report, so a leak or a malformed output can be read, not only counted.

The single **fidelity score** = ``format_validity * max(0, contains_useful - contains_noisy)``:
1.0 means always well-formed and perfectly controllable; a simulator that ignores the mode, or
writes unusable output, scores near 0.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from zerosearch.engines.base import Engine, SearchRequest
from zerosearch.jsonl import read_finished
from zerosearch.protocol import document_line, format_documents
from zerosearch.rewards import normalize_answer
from zerosearch.sim.label import JUDGE_PROMPT, contains_answer, parse_judgement


def held_out_queries(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Unique (question, query) records of a `sim build` split, with their real documents."""
    seen, out = set(), []
    for rec in read_finished(path):
        key = (rec["row_id"], rec["query"])
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out[:limit] if limit else out


STUBS = ", stub queries"
"""Suffix of the rows measured on stub queries (``sim collect``'s ``partial_queries``)."""


def query_groups(queries: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The held-out queries in two groups, each reported in its own rows: the questions themselves
    (suffix "", where the mode targets apply) and stubs of them (suffix :data:`STUBS`, where a
    faithful simulator writes what the real engine returns: often no answer). Empty groups are left
    out."""
    groups = [("", [q for q in queries if not q.get("partial")]), (STUBS, [q for q in queries if q.get("partial")])]
    return [(suffix, chosen) for suffix, chosen in groups if chosen]


def _unigram_f1(a: str, b: str) -> float:
    x, y = Counter(normalize_answer(a).split()), Counter(normalize_answer(b).split())
    same = sum((x & y).values())
    if not same:
        return 0.0
    p, r = same / sum(x.values()), same / sum(y.values())
    return 2 * p * r / (p + r)


def measure(name: str, engine: Engine, queries: Sequence[dict[str, Any]], topk: int,
            reference: dict[int, list[str]], judge=None, batch_size: int = 16,
            progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Fidelity metrics of one simulator (see the module docstring)."""
    stats = {"valid": 0, "contains_useful": 0, "contains_noisy": 0, "judge_useful": 0,
             "judge_noisy": 0, "judged": {"useful": 0, "noisy": 0}, "words": 0, "docs": 0,
             "overlap": 0.0, "seconds": 0.0, "outputs": 0, "errors": 0}
    records = []
    total = 2 * len(queries)
    for mode in ("useful", "noisy"):
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            requests = [SearchRequest(q["query"], q["question"], list(q["golden_answers"]), topk=topk,
                                      mode=mode, row_id=start + i) for i, q in enumerate(batch)]
            began = time.perf_counter()
            results = engine.search(requests)
            stats["seconds"] += time.perf_counter() - began
            judgements: list[str | None] = [None] * len(batch)
            if judge is not None:
                from zerosearch.llm.base import GenerationParams

                prompts = [[{"role": "user", "content": JUDGE_PROMPT.format(
                    query=r.query, documents=format_documents([d.text for d in r.documents]))}]
                    for r in results]
                judgements = [parse_judgement(c.text) for c in judge.chat(
                    prompts, GenerationParams(max_new_tokens=4, temperature=0.0))]
            for q, request, result, verdict in zip(batch, requests, results, judgements):
                stats["outputs"] += 1
                texts = [d.text for d in result.documents]
                if result.error and result.error_kind != "bad_output":
                    stats["errors"] += 1
                stats["valid"] += int(len(texts) == topk and all(len(t.split()) >= 3 for t in texts))
                holds = contains_answer(texts, q["golden_answers"])
                stats[f"contains_{mode}"] += int(holds)
                if verdict is not None:
                    stats["judged"][mode] += 1
                    stats[f"judge_{mode}"] += int(verdict == "useful")
                stats["words"] += sum(len(t.split()) for t in texts)
                stats["docs"] += len(texts)
                if mode == "useful":
                    stats["overlap"] += _unigram_f1(" ".join(texts), " ".join(reference[request.row_id]))
                records.append({"simulator": name, "mode": mode, "query": q["query"],
                                "golden_answers": list(q["golden_answers"]), "contains_answer": holds,
                                "error": result.error, "documents": texts})
            if progress:
                progress(name, stats["outputs"], total)
    n = max(len(queries), 1)
    validity = stats["valid"] / max(stats["outputs"], 1)
    useful, noisy = stats["contains_useful"] / n, stats["contains_noisy"] / n
    return {
        "simulator": name, "queries": len(queries), "format_validity": validity,
        "contains_useful": useful, "contains_noisy": noisy, "controllability_gap": useful - noisy,
        "judge_useful": stats["judge_useful"] / stats["judged"]["useful"] if stats["judged"]["useful"] else None,
        "judge_noisy": stats["judge_noisy"] / stats["judged"]["noisy"] if stats["judged"]["noisy"] else None,
        "doc_words": stats["words"] / max(stats["docs"], 1), "overlap": stats["overlap"] / n,
        "latency_s": stats["seconds"] / max(stats["outputs"], 1), "batch_size": batch_size,
        "words_per_query": stats["words"] / max(stats["outputs"], 1), "errors": stats["errors"],
        "fidelity": validity * max(0.0, useful - noisy), "outputs": records}


def reference_documents(queries: Sequence[dict[str, Any]], engine: Engine | None, topk: int) -> dict[int, list[str]]:
    """The real documents per query: fresh from ``engine`` when given, else those recorded."""
    if engine is None:
        return {i: list(q["documents"])[:topk] for i, q in enumerate(queries)}
    results = engine.search([SearchRequest(q["query"], topk=topk, row_id=i) for i, q in enumerate(queries)])
    return {i: [document_line(d.title, d.text) for d in r.documents]
            for i, r in enumerate(results)}


def real_engine_row(queries: Sequence[dict[str, Any]], reference: dict[int, list[str]]) -> dict[str, Any]:
    n = max(len(queries), 1)
    docs = [d for v in reference.values() for d in v]
    return {"simulator": "real engine (reference)", "queries": len(queries),
            "contains_useful": sum(contains_answer(reference[i], q["golden_answers"])
                                   for i, q in enumerate(queries)) / n,
            "doc_words": sum(len(d.split()) for d in docs) / max(len(docs), 1)}


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> str:
    """fidelity.json (metrics), outputs.jsonl (every output of every simulator), fidelity.md (table)
    and fidelity.png (bars)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "outputs.jsonl", "w") as f:
        for row in rows:
            for record in row.get("outputs", []):
                f.write(json.dumps(record) + "\n")
    rows = [{k: v for k, v in row.items() if k != "outputs"} for row in rows]
    (out / "fidelity.json").write_text(json.dumps(rows, indent=2))
    cols = [("format_validity", "well-formed k docs", "{:.1%}"), ("contains_useful", "answer in useful", "{:.1%}"),
            ("contains_noisy", "answer in noisy", "{:.1%}"), ("judge_useful", "judge: useful", "{:.1%}"),
            ("judge_noisy", "judge: noisy", "{:.1%}"), ("doc_words", "words/doc", "{:.1f}"),
            ("overlap", "overlap w/ real", "{:.3f}"), ("latency_s", "s/query", "{:.2f}"),
            ("errors", "failed outputs", "{}"), ("fidelity", "fidelity", "{:.3f}")]
    lines = ["| simulator | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "–" for key, _, fmt in cols]
        lines.append(f"| {row['simulator']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\nHeld-out queries: {rows[0]['queries']}.\n"
    (out / "fidelity.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["format_validity", "contains_useful", "contains_noisy", "fidelity"]
    sims = [r for r in rows if "fidelity" in r]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(len(sims), 1)
    for i, row in enumerate(sims):
        ax.bar([x + i * width for x in range(len(keys))], [row[k] for k in keys], width,
               label=row["simulator"])
    ax.set_xticks([x + width * (len(sims) - 1) / 2 for x in range(len(keys))],
                  ["well-formed", "answer in useful", "answer in noisy", "fidelity"])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fidelity.png", dpi=120)
    plt.close(fig)
    return text
