"""Append-only JSONL files that survive being killed: the storage of every long job.

``append`` writes whole lines and fsyncs; ``read_finished`` returns the complete records and cuts a
half-written last line off the file, so a resumed job neither loses nor duplicates a record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


def read_finished(path: str | Path) -> list[dict[str, Any]]:
    """Complete records of ``path`` (none if it does not exist); a torn last line is removed."""
    path = Path(path)
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return records


def append(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as lines and make them durable before returning."""
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
