"""Append-only JSONL files that survive being killed: the storage of every long job.

``append`` writes whole lines and fsyncs; ``read_finished`` returns the complete records and cuts a
half-written last line off the file, so a resumed job neither loses nor duplicates a record. A
complete line that is not a JSON object (a disk error, a hand edit) is moved to ``<file>.corrupt``
with a warning; every well-formed row before and after it is kept.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_finished(path: str | Path, log: Callable[[str], None] = _warn) -> list[dict[str, Any]]:
    """Complete records of ``path`` (none if it does not exist). A torn last line (a kill mid-write)
    is removed; a complete line that is not a JSON object is moved to ``<path>.corrupt`` and
    reported through ``log``, and the file keeps every other row."""
    path = Path(path)
    if not path.exists():
        return []
    records, kept, bad = [], [], []
    torn = False
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                torn = True  # only the last line can lack its newline
                break
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                record = None
            if isinstance(record, dict):
                records.append(record)
                kept.append(line)
            elif line.strip():
                bad.append((number, line))
    if bad:
        quarantine = path.with_name(path.name + ".corrupt")
        with open(quarantine, "ab") as handle:
            handle.writelines(line for _, line in bad)
        rewrite_lines(path, kept)
        lines = ", ".join(str(n) for n, _ in bad[:10]) + (" …" if len(bad) > 10 else "")
        log(f"{path}: {len(bad)} corrupt line(s) ({lines}) moved to {quarantine}; "
            f"{len(records)} well-formed rows kept")
    elif torn:
        with open(path, "r+b") as handle:
            handle.truncate(sum(len(line) for line in kept))
    return records


def rewrite_lines(path: str | Path, lines: Iterable[bytes]) -> None:
    """Replace ``path`` by ``lines`` atomically (a temporary file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def keep_until(path: str | Path, step: int) -> int:
    """Drop the records of ``path`` whose ``step`` is past ``step`` (what a resumed run will log
    again); return how many were dropped."""
    path = Path(path)
    records = read_finished(path)
    keep = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
    if len(keep) != len(records):
        rewrite_lines(path, (json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in keep))
    return len(records) - len(keep)


def append(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as lines and make them durable before returning."""
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def strict_rows(path: str | Path):
    """``(line number, value)`` for each non-blank line of a JSONL input file (a corpus, a QA set),
    raising a ``ValueError`` that names the file, line and problem (not UTF-8, not JSON) on the first
    bad line: inputs are the user's, so nothing is skipped silently."""
    with open(path, "rb") as handle:
        for lineno, blob in enumerate(handle, start=1):
            try:
                line = blob.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {err.start + 1} of the line: "
                                 f"{blob[err.start:err.start + 1]!r})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
