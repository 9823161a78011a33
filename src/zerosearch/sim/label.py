"""`zerosearch sim label`: label each collected (query, documents) pair useful or noisy, three ways.

- ``judge``: an LLM (any OpenAI-compatible endpoint or an in-process model) is asked whether the
  documents hold enough information to answer the query (the paper's current recipe);
- ``outcome``: useful when the trajectory that issued the query ended with a correct answer
  (F1 >= ``outcome_threshold``; the paper's first recipe; undefined for question-as-query records);
- ``contains``: a gold answer occurs in the documents (normalised text); left unlabelled when every
  gold answer is yes/no (comparison questions), whose answer is never a span of the documents, so
  "no" inside a passage would mark it useful and its absence noisy, both by accident.

All three are kept on every pair; ``sim build`` picks one. The judge is the slow one, so pairs are
appended as they are labelled and a restart skips finished pairs.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

from zerosearch.jsonl import append, read_finished
from zerosearch.llm.base import GenerationParams, LLMBackend
from zerosearch.protocol import document_line, format_documents
from zerosearch.rewards import normalize_answer

METHODS = ("judge", "outcome", "contains")

JUDGE_PROMPT = (
    "You check search results. Query: {query}\n\nDocuments:\n{documents}\n\n"
    "Do these documents contain enough information to answer the query? Answer with one word, "
    "yes or no.")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def doc_texts(documents: Sequence[dict[str, Any]]) -> list[str]:
    return [document_line(d.get("title"), d["text"]) for d in documents]


def span_answers(golds: Sequence[str]) -> bool:
    """Whether containment can say anything: some gold answer is more than yes/no."""
    return any(normalize_answer(g) not in ("", "yes", "no") for g in golds)


def contains_answer(texts: Sequence[str], golds: Sequence[str]) -> bool:
    """True when a normalised gold answer occurs in the normalised documents."""
    haystack = f" {normalize_answer(' '.join(texts))} "
    return any((g := normalize_answer(gold)) and f" {g} " in haystack for gold in golds)


def pairs_from_collection(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pair per recorded search that returned documents."""
    pairs = []
    for rec in records:
        for i, search in enumerate(rec["searches"]):
            if search["documents"]:
                pairs.append({"pair_id": f"{rec['row_id']}:{i}", "row_id": rec["row_id"],
                              "question": rec["question"], "golden_answers": rec["golden_answers"],
                              "query": search["query"], "documents": search["documents"],
                              "f1": rec.get("f1"), "engine": rec.get("engine"),
                              "partial": bool(search.get("partial"))})
    return pairs


def parse_judgement(text: str | None) -> str | None:
    match = _YES_NO.search(text or "")
    if not match:
        return None
    return "useful" if match.group(1).lower() == "yes" else "noisy"


def label(collected: str | Path, out_path: str | Path, judge: LLMBackend | None = None,
          outcome_threshold: float = 0.5, batch_size: int = 16,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Label every pair of ``collected`` into ``out_path`` (resumable); returns the agreement report."""
    pairs = pairs_from_collection(read_finished(collected))
    if not pairs:
        raise ValueError(f"{collected} holds no (query, documents) pairs to label")
    out_path = Path(out_path)
    done = {p["pair_id"] for p in read_finished(out_path)}
    todo = [p for p in pairs if p["pair_id"] not in done]
    if progress:
        progress(len(pairs) - len(todo), len(pairs))
    params = GenerationParams(max_new_tokens=4, temperature=0.0)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        verdicts: list[str | None] = [None] * len(batch)
        if judge is not None:
            prompts = [[{"role": "user", "content": JUDGE_PROMPT.format(
                query=p["query"], documents=format_documents(doc_texts(p["documents"])))}] for p in batch]
            verdicts = [parse_judgement(c.text) for c in judge.chat(prompts, params)]
        for pair, verdict in zip(batch, verdicts):
            contains = None if not span_answers(pair["golden_answers"]) else (
                "useful" if contains_answer(doc_texts(pair["documents"]), pair["golden_answers"])
                else "noisy")
            outcome = None if pair["f1"] is None else (
                "useful" if pair["f1"] >= outcome_threshold else "noisy")
            pair["labels"] = {"judge": verdict, "outcome": outcome, "contains": contains}
        append(out_path, batch)
        if progress:
            progress(len(pairs) - len(todo) + start + len(batch), len(pairs))
    return agreement(read_finished(out_path))


def agreement(labelled: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method: how many pairs it labelled and how many useful; per pair of methods: agreement."""
    report: dict[str, Any] = {"pairs": len(labelled), "methods": {}, "agreement": {}}
    for method in METHODS:
        values = [p["labels"][method] for p in labelled if p["labels"][method] is not None]
        report["methods"][method] = {"labelled": len(values),
                                     "useful": sum(v == "useful" for v in values)}
    for a, b in combinations(METHODS, 2):
        both = [(p["labels"][a], p["labels"][b]) for p in labelled
                if p["labels"][a] is not None and p["labels"][b] is not None]
        report["agreement"][f"{a}~{b}"] = {
            "pairs": len(both), "rate": sum(x == y for x, y in both) / len(both) if both else None}
    return report
