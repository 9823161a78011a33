"""BM25 over a FlashRAG corpus, with bm25s (sparse matrices, fast batched retrieval).

The index is built once and saved (see :mod:`zerosearch.corpus` for where); later starts reload it
in about a second. A saved index whose corpus fingerprint no longer matches is rebuilt.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zerosearch.corpus import fingerprint, index_dir, load_corpus, read_meta, write_meta
from zerosearch.engines.base import SearchRequest, SearchResult

_INDEX_VERSION = 1


class BM25Engine:
    """Lexical retrieval; ignores useful/noisy (a real engine returns what it finds)."""

    name = "bm25"

    def __init__(self, corpus_path: str | Path, index_path: str | Path | None = None,
                 k1: float = 0.9, b: float = 0.4, log=print):
        import bm25s

        self._bm25s = bm25s
        self.corpus = load_corpus(corpus_path)
        self.index_path = index_dir(self.corpus.path, "bm25s", index_path)
        expected = {"version": _INDEX_VERSION, "corpus": fingerprint(self.corpus.path),
                    "k1": k1, "b": b, "size": len(self.corpus)}
        if read_meta(self.index_path) == expected:
            self.retriever = bm25s.BM25.load(str(self.index_path), show_progress=False)
        else:
            started = time.perf_counter()
            self.retriever = bm25s.BM25(k1=k1, b=b)
            tokens = bm25s.tokenize(self.corpus.search_texts(), stopwords="en", show_progress=False)
            self.retriever.index(tokens, show_progress=False)
            shutil.rmtree(self.index_path, ignore_errors=True)
            self.index_path.mkdir(parents=True, exist_ok=True)
            self.retriever.save(str(self.index_path), show_progress=False)
            write_meta(self.index_path, expected)
            log(f"bm25: indexed {len(self.corpus)} passages in {time.perf_counter() - started:.1f}s "
                f"-> {self.index_path}")
        self._vocab = self.retriever.vocab_dict

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        if not requests:
            return []
        started = time.perf_counter()
        k = min(max(r.topk for r in requests), len(self.corpus))
        queries = self._bm25s.tokenize([r.query for r in requests], stopwords="en",
                                       return_ids=False, show_progress=False)
        # Tokens the corpus never saw cannot match; a query left with none returns no documents.
        queries = [[t for t in q if t in self._vocab] for q in queries]
        answerable = [i for i, q in enumerate(queries) if q]
        docs = np.zeros((len(requests), 0), dtype=np.int64)
        scores = np.zeros((len(requests), 0), dtype=np.float32)
        if answerable:
            docs_a, scores_a = self.retriever.retrieve([queries[i] for i in answerable], k=k,
                                                       show_progress=False, n_threads=1)
            docs = np.zeros((len(requests), k), dtype=np.int64)
            scores = np.zeros((len(requests), k), dtype=np.float32)
            docs[answerable], scores[answerable] = docs_a, scores_a
        latency = (time.perf_counter() - started) / len(requests)
        results = []
        for i, request in enumerate(requests):
            found = []
            if queries[i]:
                for doc_index, score in zip(docs[i][: request.topk], scores[i][: request.topk]):
                    if score <= 0:  # no query term in the passage
                        continue
                    found.append(self.corpus.document(int(doc_index), float(score)))
            results.append(SearchResult(query=request.query, documents=found, engine=self.name,
                                        topk=request.topk, latency_s=latency, row_id=request.row_id))
        return results

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "corpus": str(self.corpus.path), "passages": len(self.corpus),
                "index": str(self.index_path)}

    def close(self) -> None:
        pass
