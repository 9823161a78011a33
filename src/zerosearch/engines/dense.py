"""Dense retrieval: sentence-transformers embeddings + a faiss inner-product index (``dense`` extra).

The default encoder is the embedded all-MiniLM-L6-v2. Passages are embedded once (normalised, so
inner product = cosine) and the faiss index is saved beside the corpus or in the cache, like BM25.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from zerosearch.corpus import fingerprint, index_dir, load_corpus, read_meta, write_meta
from zerosearch.engines.base import EngineError, SearchRequest, SearchResult
from zerosearch.models import resolve_model

_INDEX_VERSION = 1


class DenseEngine:
    """Embedding retrieval over a FlashRAG corpus."""

    name = "dense"

    def __init__(self, corpus_path: str | Path, model: str = "embedded:minilm",
                 index_path: str | Path | None = None, batch_size: int = 64, device: str = "cpu",
                 log=print):
        try:
            import faiss
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise EngineError(f"the dense engine needs the 'dense' extra "
                              f"(pip install 'zerosearch[dense]'): {err}") from None
        self._faiss = faiss
        self.corpus = load_corpus(corpus_path)
        self.model_name = model
        self.encoder = SentenceTransformer(resolve_model(model), device=device)
        self.batch_size = batch_size
        self.index_path = index_dir(self.corpus.path, "dense", index_path)
        expected = {"version": _INDEX_VERSION, "corpus": fingerprint(self.corpus.path),
                    "model": model, "size": len(self.corpus)}
        index_file = self.index_path / "passages.faiss"
        if read_meta(self.index_path) == expected and index_file.exists():
            self.index = faiss.read_index(str(index_file))
        else:
            started = time.perf_counter()
            vectors = self.encoder.encode(self.corpus.search_texts(), batch_size=batch_size,
                                          normalize_embeddings=True, convert_to_numpy=True,
                                          show_progress_bar=len(self.corpus) > 5000)
            self.index = faiss.IndexFlatIP(vectors.shape[1])
            self.index.add(vectors.astype("float32"))
            shutil.rmtree(self.index_path, ignore_errors=True)
            self.index_path.mkdir(parents=True, exist_ok=True)
            faiss.write_index(self.index, str(index_file))
            write_meta(self.index_path, expected)
            log(f"dense: embedded {len(self.corpus)} passages in "
                f"{time.perf_counter() - started:.1f}s -> {self.index_path}")

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        if not requests:
            return []
        started = time.perf_counter()
        k = min(max(r.topk for r in requests), len(self.corpus))
        queries = self.encoder.encode([r.query for r in requests], batch_size=self.batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True)
        scores, docs = self.index.search(queries.astype("float32"), k)
        latency = (time.perf_counter() - started) / len(requests)
        results = []
        for request, row_docs, row_scores in zip(requests, docs, scores):
            found = [self.corpus.document(int(j), float(s))
                     for j, s in zip(row_docs[: request.topk], row_scores[: request.topk]) if j >= 0]
            results.append(SearchResult(query=request.query, documents=found, engine=self.name,
                                        topk=request.topk, latency_s=latency, row_id=request.row_id))
        return results

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "corpus": str(self.corpus.path), "passages": len(self.corpus),
                "model": self.model_name, "index": str(self.index_path)}

    def close(self) -> None:
        pass
