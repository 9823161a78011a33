"""`zerosearch sim collect`: record what a real engine returns for the queries a policy issues.

A policy (default: an instruct model prompted with the search template) answers training questions
against a real engine (bm25, dense, web, remote) through the same rollout code as training. For every
question we keep every (query, documents) pair it produced, with the trajectory's answer and F1, one
JSONL line per question, appended as batches finish; a restart skips finished questions.

Small instruct models rarely emit ``<search>`` at all (SmolLM2-135M: 0 of 32 tries), so
``query_source="question"`` is offered as an explicit alternative: the question itself is the query
(the first query most agents issue). The records say which source made them.

With the question as the query, ``partial_queries`` adds stubs of it: the question without its
names, then random subsets of its words, the kind of query an RL policy drifts to ("In what year
was born?"). Recording what the real engine returns for them (not the answer, once the subject's
name is gone) lets a simulator tuned on the collection follow the query, instead of writing the
answer it was given whatever the query says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from zerosearch.engines.base import Engine, SearchRequest
from zerosearch.jsonl import append, read_finished
from zerosearch.rewards import f1_score
from zerosearch.rollout import RolloutConfig, Row, run_rollouts

QUERY_SOURCES = ("policy", "question")


@dataclass
class CollectConfig:
    """How queries are produced and recorded."""

    query_source: str = "policy"
    """policy (the agent's own searches) or question (the question is the query)."""
    batch_size: int = 16
    """Questions per batch."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(max_turns=3, temperature=0.7))
    """The collecting policy's turns, budgets, top-k and sampling."""
    partial_queries: int = 0
    """With query_source=question: extra queries per question, recorded with ``partial: true``:
    the first is the question without its names (:func:`nameless_query`), the others random
    subsets of its words in their order (:func:`partial_query`)."""
    seed: int = 0
    """Seed of the partial queries (each question's are a function of the seed and its id)."""


def partial_query(question: str, rng: random.Random, keep: float = 0.5) -> str | None:
    """A stub of ``question``: each word kept with probability ``keep``, order kept; never empty
    and never the whole question (None for a one-word question)."""
    words = question.split()
    if len(words) < 2:
        return None
    while True:
        kept = [w for w in words if rng.random() < keep]
        if 0 < len(kept) < len(words):
            return " ".join(kept)


def _docs(result) -> list[dict[str, Any]]:
    return [{"title": d.title, "text": d.text, "id": d.id} for d in result.documents]


def _is_name(word: str, position: int) -> bool:
    """A word of a question counts as (part of) a name when it is not the first and starts with a
    capital letter."""
    return position > 0 and word[:1].isupper()


def question_names(question: str) -> list[str]:
    """The names in ``question`` (see :func:`_is_name`), without punctuation ("Who founded Quian
    Liarkkrash's school?" -> Quian, Liarkkrash's)."""
    return [w.strip("?.,;:!\"()") for i, w in enumerate(question.split()) if _is_name(w, i)]


def nameless_query(question: str) -> str | None:
    """``question`` without its names (the words after the first that start with a capital letter):
    the stub a policy sends when it drops the entity ("In what year was born?"). None when the
    question has no such word or nothing else."""
    words = question.split()
    kept = [w for i, w in enumerate(words) if not _is_name(w, i)]
    return " ".join(kept) if 1 < len(kept) < len(words) else None


def _partials(row: Row, cfg: CollectConfig) -> list[str]:
    if cfg.partial_queries <= 0:
        return []
    rng = random.Random(f"{cfg.seed}:{row.id}")
    nameless = nameless_query(row.question)
    stubs = [nameless] if nameless else []
    stubs += [partial_query(row.question, rng) for _ in range(cfg.partial_queries - len(stubs))]
    return list(dict.fromkeys(q for q in stubs if q))


def collect(rows: Sequence[Row], engine: Engine, out_path: str | Path, cfg: CollectConfig,
            generator=None, tokenizer=None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Collect (or resume collecting) into ``out_path``; returns counts."""
    if cfg.query_source not in QUERY_SOURCES:
        raise ValueError(f"query_source must be one of {', '.join(QUERY_SOURCES)}")
    if cfg.query_source == "policy" and (generator is None or tokenizer is None):
        raise ValueError("query_source=policy needs a policy model")
    if cfg.partial_queries < 0:
        raise ValueError(f"partial_queries must be >= 0, got {cfg.partial_queries}")
    if cfg.partial_queries and cfg.query_source != "question":
        raise ValueError("partial_queries are stubs of the question: use query_source=question")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["row_id"] for r in read_finished(out_path)}
    todo = [r for r in rows if str(r.id) not in done]
    finished = len(rows) - len(todo)
    if progress:
        progress(finished, len(rows))
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        records = []
        if cfg.query_source == "question":
            queries = [[row.question] + _partials(row, cfg) for row in batch]
            results = iter(engine.search([
                SearchRequest(q, row.question, list(row.golden_answers), topk=cfg.rollout.topk, row_id=row.id)
                for row, qs in zip(batch, queries) for q in qs]))
            for row, qs in zip(batch, queries):
                searches, name = [], None
                for turn, query in enumerate(qs):
                    result = next(results)
                    if result.error:
                        raise RuntimeError(f"the engine failed for {query!r}: {result.error}")
                    name = name or result.engine
                    searches.append({"turn": turn, "query": query, "documents": _docs(result),
                                     "partial": turn > 0})
                records.append({"row_id": str(row.id), "question": row.question,
                                "golden_answers": row.golden_answers, "engine": name,
                                "query_source": "question", "answer": None, "f1": None,
                                "searches": searches})
        else:
            trajs = run_rollouts(batch, generator, tokenizer, engine, cfg.rollout,
                                 eos_token_ids=[tokenizer.eos_token_id])
            for t in trajs:
                searches = [{"turn": i, "query": e["query"],
                             "documents": [{"title": None, "text": d, "id": None} for d in e["documents"]],
                             "error": e.get("error")}
                            for i, e in enumerate(ev for ev in t.trace if ev["type"] == "search")]
                records.append({"row_id": str(t.row.id), "question": t.row.question,
                                "golden_answers": t.row.golden_answers, "engine": engine.name,
                                "query_source": "policy", "answer": t.answer,
                                "f1": f1_score(t.answer, t.row.golden_answers),
                                "searches": [s for s in searches if not s["error"]]})
        append(out_path, records)
        finished += len(batch)
        if progress:
            progress(finished, len(rows))
    all_records = read_finished(out_path)
    return {"questions": len(all_records),
            "queries": sum(len(r["searches"]) for r in all_records),
            "questions_with_queries": sum(bool(r["searches"]) for r in all_records)}
