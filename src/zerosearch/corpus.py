"""Read a FlashRAG-format passage corpus and decide where its search indexes live.

A corpus is JSONL, one passage a line: ``{"id": str, "contents": "\\"Title\\"\\ntext"}`` (FlashRAG /
Search-R1). ``{"title", "text"}`` rows are accepted too. Indexes are saved next to the corpus
(``<corpus>.<kind>/``) when that folder is writable, else under the zerosearch cache, keyed by the
corpus's path, size and modification time so that an edited corpus is re-indexed, never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zerosearch.jsonl import strict_rows
from zerosearch.protocol import passage_text


@dataclass
class Corpus:
    """Passages in corpus order."""

    path: Path
    ids: list[str]
    titles: list[str | None]
    texts: list[str]
    contents: list[str]
    """Each row's ``contents`` as stored (byte-exact; rebuilt as ``"Title"\\ntext`` for title/text
    rows): what the Search-R1 API returns and Search-R1's document lines are written from."""

    def __len__(self) -> int:
        return len(self.ids)

    def document(self, j: int, score: float | None = None):
        """Passage ``j`` as a :class:`~zerosearch.engines.base.Document`."""
        from zerosearch.engines.base import Document

        return Document(text=self.texts[j], title=self.titles[j], id=self.ids[j], score=score,
                        contents=self.contents[j])

    def search_texts(self) -> list[str]:
        """What retrievers index: title and text together."""
        return [f"{t}\n{x}" if t else x for t, x in zip(self.titles, self.texts)]


def load_corpus(path: str | Path) -> Corpus:
    """Load a JSONL corpus; errors name the file and line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    ids: list[str] = []
    titles: list[str | None] = []
    texts: list[str] = []
    contents: list[str] = []
    for lineno, row in strict_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        if "contents" in row:
            raw = str(row["contents"])
            title, text = passage_text(raw)
        elif "text" in row:
            title, text = row.get("title"), str(row["text"])
            raw = f'"{title}"\n{text}' if title else text
        else:
            raise ValueError(f"{path}:{lineno}: a passage needs 'contents' (or 'title' + 'text')")
        ids.append(str(row.get("id", len(ids))))
        titles.append(title)
        texts.append(text)
        contents.append(raw)
    if not ids:
        raise ValueError(f"corpus {path} holds no passages")
    return Corpus(path, ids, titles, texts, contents)


def fingerprint(path: Path) -> str:
    """Changes whenever the corpus file changes (path, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def index_dir(corpus_path: Path, kind: str, explicit: str | Path | None = None) -> Path:
    """Where the ``kind`` index of a corpus is stored (see the module docstring)."""
    if explicit:
        return Path(explicit).expanduser()
    corpus_path = corpus_path.expanduser()
    parent = corpus_path.parent
    # Mode bits as well as access(): root may write anywhere, but a folder marked read-only (a
    # shared data set) is not ours to write into.
    if os.access(parent, os.W_OK) and parent.stat().st_mode & 0o222:
        return corpus_path.with_name(corpus_path.name + f".{kind}")
    from zerosearch.models import cache_dir

    return cache_dir() / "indexes" / f"{corpus_path.stem}-{kind}-{fingerprint(corpus_path)}"


def read_meta(directory: Path) -> dict:
    meta = directory / "zerosearch_meta.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def write_meta(directory: Path, meta: dict) -> None:
    (directory / "zerosearch_meta.json").write_text(json.dumps(meta, indent=2))
