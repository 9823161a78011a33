"""`zerosearch sim build`: a balanced useful/noisy SFT set for the simulation LLM.

Each example is a chat prompt-completion pair: the prompt is the fine-tuned simulator prompt
(byte-exact with the released simulators: question, gold answer, query, useful/noisy), the completion
the real engine's documents as ``Doc i:`` lines (any top-k up to 20). Useful and noisy examples are
balanced by down-sampling the larger side; train and validation are split by question, so
validation questions are unseen. ``load_released`` converts the SFT layouts users have (chat
``messages``, ShareGPT ``conversations``, Alpaca ``instruction``/``input``/``output``,
``prompt``/``completion``) into the same format.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from zerosearch.jsonl import read_finished
from zerosearch.protocol import document_line, finetuned_sim_messages, format_documents
from zerosearch.rewards import normalize_answer
from zerosearch.sim.label import METHODS, contains_answer, doc_texts

# Some corpora (a FlashRAG passage file among them) keep the title inside the text.
_INLINE_TITLE = re.compile(r"^\s*Title:\s*(.+?)\s+Text:\s*", re.S)


def clip_words(text: str, max_words: int, golds: Sequence[str] = (), lead: int | None = None) -> str:
    """At most ``max_words`` words of ``text``: a window around the first gold answer it contains
    (so clipping never turns a useful document into a noisy one), starting ``lead`` words before it
    (default a third of the window), else the beginning."""
    words = text.split()
    if len(words) <= max_words:
        return text
    norm = [normalize_answer(w) for w in words]
    start = 0
    for gold in golds:
        target = normalize_answer(gold).split()
        hit = next((i for i in range(len(norm)) if target and " ".join(
            t for t in norm[i:i + 3 * len(target)] if t).startswith(" ".join(target))), None)
        if hit is not None:
            before = max_words // 3 if lead is None else lead
            start = max(0, min(hit - before, len(words) - max_words))
            break
    return " ".join(words[start:start + max_words])


def target_document(doc: dict[str, Any], max_words: int, golds: Sequence[str],
                    lead: int | None = None) -> str:
    """A document as the simulator should write it: ``(Title: …)`` then at most ``max_words`` words
    of the text (around the answer, see :func:`clip_words`). The title is kept whole so that every
    target starts the same way, and a title held inside the text (``Title: X Text: …``) moves out."""
    title, text = doc.get("title"), doc["text"]
    inline = _INLINE_TITLE.match(text) if not title else None
    if inline:
        title, text = inline.group(1), text[inline.end():]
    return document_line(title, clip_words(text, max_words, golds, lead))


def example(pair: dict[str, Any], mode: str, max_docs: int, max_doc_words: int,
            answer_first: bool = False, answer_lead: int | None = None) -> dict[str, Any]:
    """One SFT example from a labelled pair; ``answer_first`` moves the documents holding a gold
    answer to the front of a useful example (the rest keep the engine's order) before the first
    ``max_docs`` are kept, so a pair labelled useful by a lower-ranked document stays useful."""
    golds = pair["golden_answers"]
    texts = [target_document(d, max_doc_words, golds, answer_lead) for d in pair["documents"]]
    if answer_first and mode == "useful" and not pair.get("partial"):  # a stub keeps the engine's order
        texts.sort(key=lambda t: not contains_answer([t], golds))  # stable: ranks kept within
    texts = texts[:max_docs]
    messages = finetuned_sim_messages(pair["query"], pair["question"], pair["golden_answers"], mode,
                                      k=len(texts))
    return {"prompt": messages, "completion": [{"role": "assistant", "content": format_documents(texts)}],
            "mode": mode, "query": pair["query"], "question": pair["question"],
            "golden_answers": pair["golden_answers"], "row_id": pair["row_id"], "k": len(texts),
            "documents": texts, "partial": bool(pair.get("partial"))}


def paired_examples(pair: dict[str, Any], max_docs: int) -> list[dict[str, Any]]:
    """The pairs a query can give in each mode, each a copy of ``pair`` with its ``contains`` label
    set: useful when a document holds a gold answer (those documents first, then the engine's
    order); noisy when at least ``max_docs`` documents do not (only those, in the engine's order).

    With the question as the query, a real engine returns the answer for most single-hop questions
    and for few multi-hop ones, so labelling each query once ties the mode to the kind of question,
    and a small simulator learns that instead of the mode word. Retrieving deeper than ``max_docs``
    (for example top-10 for three-document targets) lets most queries give both.

    A *partial* query (a stub of the question, ``sim collect``'s ``partial_queries``) gives as its
    useful example the engine's own top documents in the engine's order, answer or not: useful
    mode is then what a working engine returns for the query, which is rarely the answer once the
    subject's name is gone (lifting a lower-ranked document that happens to hold the answer, a
    common year or country, would teach the opposite). Without these examples the simulator
    writes the answer for any query, and a policy trained against it learns stub queries that
    real engines do not answer."""
    golds = pair["golden_answers"]
    docs = pair["documents"]
    holds = [contains_answer(doc_texts([d]), golds) for d in docs]
    holding = [d for d, h in zip(docs, holds) if h]
    rest = [d for d, h in zip(docs, holds) if not h]
    out = []
    if pair.get("partial"):
        if len(docs) >= max_docs:
            out.append({**pair, "labels": {**pair["labels"], "contains": "useful"}})
    elif holding:
        out.append({**pair, "documents": holding + rest, "labels": {**pair["labels"], "contains": "useful"}})
    if len(rest) >= max_docs:
        out.append({**pair, "documents": rest, "labels": {**pair["labels"], "contains": "noisy"}})
    return out


def build(labelled: str | Path, out_dir: str | Path, label_by: str = "contains", max_docs: int = 5,
          max_doc_words: int = 40, val_fraction: float = 0.1, seed: int = 0,
          balance: bool = True, answer_first: bool = False,
          answer_lead: int | None = None, paired: bool = False) -> dict[str, Any]:
    """Write ``train.jsonl`` and ``val.jsonl`` into ``out_dir``; returns statistics.

    ``answer_first``: in useful examples the documents holding a gold answer come first, so the
    simulator learns to state the answer it was given early (a short dependency on the prompt,
    learned in fewer steps, and never cut by a token budget); the engine's order is otherwise kept.
    ``answer_lead``: words a clipped document keeps before the answer (default a third of
    ``max_doc_words``); small values put the answer within a few words of the title.
    ``paired``: every query gives an example of *each* mode its documents allow (see
    :func:`paired_examples`) instead of one example in the mode of its label, so that the prompt's
    mode word, not the kind of question, is what tells useful targets from noisy ones.
    """
    if label_by not in METHODS:
        raise ValueError(f"label_by must be one of {', '.join(METHODS)}")
    if not 1 <= max_docs <= 20:
        raise ValueError("max_docs must be between 1 and 20")
    pairs = [p for p in read_finished(labelled) if p["labels"].get(label_by) is not None]
    if paired:
        if label_by != "contains":
            raise ValueError("paired examples are split by answer containment: use label_by='contains'")
        pairs = [q for p in pairs for q in paired_examples(p, max_docs)]
    if not pairs:
        raise ValueError(f"no pair in {labelled} has a {label_by!r} label")
    rng = random.Random(seed)
    rows = sorted({p["row_id"] for p in pairs})
    rng.shuffle(rows)
    val_rows = set(rows[: max(1, round(len(rows) * val_fraction))]) if val_fraction > 0 else set()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for split in splits:
        chosen = [p for p in pairs if (p["row_id"] in val_rows) == (split == "val")]
        by_mode = {m: [p for p in chosen if p["labels"][label_by] == m] for m in ("useful", "noisy")}
        missing = [m for m, v in by_mode.items() if not v]
        if split == "train" and missing:
            raise ValueError(f"the training split has no {missing[0]} examples by {label_by!r} labels "
                             f"({len(chosen)} pairs); collect more questions or choose another label")
        if balance and all(by_mode.values()):
            n = min(len(v) for v in by_mode.values())
            by_mode = {m: rng.sample(v, n) for m, v in by_mode.items()}
        examples = [example(p, m, max_docs, max_doc_words, answer_first, answer_lead)
                    for m, v in by_mode.items() for p in v]
        rng.shuffle(examples)
        splits[split] = examples
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for ex in examples:
                handle.write(json.dumps(ex, ensure_ascii=False) + "\n")
    stats = {split: {"examples": len(v), "modes": dict(Counter(e["mode"] for e in v)),
                     "questions": len({e["row_id"] for e in v}),
                     "partial": dict(Counter(e["mode"] for e in v if e["partial"])),
                     "mean_docs": sum(e["k"] for e in v) / len(v) if v else 0.0,
                     "mean_target_words": sum(len(e["completion"][0]["content"].split()) for e in v)
                     / len(v) if v else 0.0} for split, v in splits.items()}
    stats["label_by"], stats["answer_first"] = label_by, answer_first
    stats["answer_lead"] = answer_lead
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def load_released(path: str | Path) -> list[dict[str, Any]]:
    """Convert a released simulation-tuning file (jsonl/json/parquet) into prompt-completion examples."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"simulation-tuning data not found: {path}")
    if path.suffix == ".parquet":
        import pandas as pd

        records = pd.read_parquet(path).to_dict("records")
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
    else:
        records = read_finished(path)
    return [_convert(rec, i, path) for i, rec in enumerate(records)]


def _convert(rec: dict[str, Any], index: int, path: Path) -> dict[str, Any]:
    def chat(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
        roles = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
                 "assistant": "assistant"}
        return [{"role": roles[m.get("role", m.get("from"))], "content": m.get("content", m.get("value"))}
                for m in messages]

    if "prompt" in rec and "completion" in rec:
        prompt, completion = rec["prompt"], rec["completion"]
        prompt = chat(prompt) if isinstance(prompt, (list, tuple)) else [{"role": "user", "content": prompt}]
        completion = chat(completion) if isinstance(completion, (list, tuple)) else [
            {"role": "assistant", "content": completion}]
        return {"prompt": prompt, "completion": completion}
    messages = rec.get("messages", rec.get("conversations"))
    if messages is not None:
        messages = chat(list(messages))
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{path}: record {index} does not end with an assistant message")
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if "instruction" in rec and "output" in rec:
        user = rec["instruction"] + (("\n" + rec["input"]) if rec.get("input") else "")
        return {"prompt": [{"role": "system", "content": rec.get("system", "")},
                           {"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": rec["output"]}]}
    raise ValueError(f"{path}: record {index} has none of the known layouts (messages, "
                     "conversations, instruction/input/output, prompt/completion)")
