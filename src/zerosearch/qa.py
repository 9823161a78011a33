"""QA datasets as :class:`Row` lists, from any of the layouts users have.

- FlashRAG JSONL: ``{"id", "question", "golden_answers"}`` per line (a file, or a folder holding
  ``<split>.jsonl``);
- the ZeroSearch / Search-R1 parquet layout: ``prompt`` (chat messages ending in ``Question: …``)
  and ``reward_model.ground_truth.target``, or plain ``question`` / ``golden_answers`` columns;
- a hub id (``org/name``), through ``datasets.load_dataset`` when online.

Every row keeps an id (the file's, or its line number), so results can be joined back to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from zerosearch.jsonl import strict_rows


BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wiki", "musique", "bamboogle")
"""The seven QA benchmarks of the paper's tables, by their folder names."""


@dataclass
class Row:
    """One question with its gold answers; ``id`` travels with every search it causes."""

    question: str
    golden_answers: list[str]
    id: str | int | None = None


_QUESTION_RE = re.compile(r"Question:\s*(.*?)\s*$", re.DOTALL)


def _prompt_question(prompt: Any, index: int, where: str) -> str:
    """The question inside a Search-R1 / ZeroSearch ``prompt``: chat messages (a list, a tuple or,
    from pandas, a numpy array of dicts) or a plain string, whose last user turn ends in
    ``Question: …``. Anything else is an error naming the row, never a guessed question."""
    if isinstance(prompt, str):
        content = prompt
    else:
        messages = list(prompt) if hasattr(prompt, "__len__") and not isinstance(prompt, dict) else None
        users = [m for m in messages or [] if isinstance(m, dict) and m.get("role", "user") == "user"
                 and isinstance(m.get("content"), str)]
        if not users:
            raise ValueError(f"{where}: row {index}: prompt holds no user message with a text "
                             f"content (got {type(prompt).__name__})")
        content = users[-1]["content"]
    match = _QUESTION_RE.search(content)
    if match is None or not match.group(1).strip():
        raise ValueError(f"{where}: row {index}: no 'Question: …' in the prompt")
    return match.group(1)


def _row_from_record(rec: dict[str, Any], index: int, where: str) -> Row:
    question = rec.get("question")
    answers = rec.get("golden_answers", rec.get("answers", rec.get("answer")))
    if question is None and "prompt" in rec:  # Search-R1 / ZeroSearch parquet
        question = _prompt_question(rec["prompt"], index, where)
    if answers is None and isinstance(rec.get("reward_model"), dict):
        truth = rec["reward_model"].get("ground_truth", {})
        answers = truth.get("target") if isinstance(truth, dict) else truth
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: row {index} has no question")
    if isinstance(answers, str):
        answers = [answers]
    if answers is None or not len(answers):
        raise ValueError(f"{where}: row {index} has no gold answers")
    ident = rec.get("id", (rec.get("extra_info") or {}).get("index", index) if isinstance(
        rec.get("extra_info"), dict) else index)
    return Row(question.strip(), [str(a) for a in answers], str(ident))


def load_records(source: str | Path, split: str = "train", limit: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The raw records of a QA source (a file, a folder holding ``<split>.jsonl`` /
    ``<split>.parquet``, or a hub id) and the name to cite in errors about them."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or unset for every row), got {limit}")
    path = Path(str(source)).expanduser()
    if path.is_dir():
        for candidate in (path / f"{split}.jsonl", path / f"{split}.parquet"):
            if candidate.exists():
                path = candidate
                break
        else:
            present = sorted(p.name for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
            raise FileNotFoundError(f"no {split}.jsonl or {split}.parquet in {path} "
                                    f"(found: {', '.join(present) or 'nothing'})")
    records: list[dict[str, Any]]
    if path.is_file():
        if path.suffix == ".parquet":
            import pandas as pd

            records = pd.read_parquet(path).to_dict("records")
        else:
            records = []
            for _, record in strict_rows(path):
                records.append(record)
                if limit and len(records) >= limit:
                    break
    elif re.match(r"^[\w.-]+/[\w.-]+$", str(source)) and not str(source).startswith("."):
        import datasets

        records = list(datasets.load_dataset(str(source), split=split))
    else:
        raise FileNotFoundError(f"QA data not found: {source} (a FlashRAG .jsonl file, a folder "
                                "with <split>.jsonl, a parquet file, or a hub id)")
    return (records[:limit] if limit else records), str(path)


def load_qa(source: str | Path, split: str = "train", limit: int | None = None) -> list[Row]:
    """Load QA rows from a file, a folder (``<split>.jsonl`` / ``<split>.parquet``) or a hub id."""
    return load_qa_grouped(source, None, split, limit)[0]


def load_qa_grouped(source: str | Path, key: str | None, split: str = "train",
                    limit: int | None = None) -> tuple[list[Row], list[str] | None]:
    """:func:`load_qa`'s rows and, with a dotted ``key`` (``metadata.hops``, ``data_source``), each
    row's value of it as a string (None without a key), from one read of the source."""
    records, where = load_records(source, split, limit)
    rows = [_row_from_record(rec, i, where) for i, rec in enumerate(records)]
    return rows, None if key is None else [record_field(rec, key, i, where) for i, rec in enumerate(records)]


class FieldError(ValueError):
    """A record lacks the field asked for, or holds no usable value there."""


def record_field(record: dict[str, Any], key: str, index: int, where: str) -> str:
    """The value at dotted ``key`` of one record, as a string: a group label. A record without it,
    or with an empty or non-scalar value (a list, a mapping, null, NaN), is an error naming the row
    and the key, never a silent default."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise FieldError(f"{where}: row {index} has no {key!r} field")
        value = value[part]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy scalars from parquet
        value = value.item()
    if not isinstance(value, (str, int, float, bool)) or value != value or str(value).strip() == "":
        raise FieldError(f"{where}: row {index} has {key} = {value!r}, not a group label "
                         "(a non-empty string or a number)")
    return str(value)
