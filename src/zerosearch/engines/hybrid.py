"""The hybrid engine: a real engine behind a SQLite cache and a spending cap, the simulator for the rest.

Two uses: collecting simulation-tuning data without ever paying twice for a query, and RL that
spends a fixed real-search budget and simulates everything past it.

For each request of a batch:

1. **cache**: a stored real result for the same normalised query (case-folded, whitespace
   collapsed, NFKC) and the same engine settings (real engine kind, its corpus / URL / encoder,
   top-k) answers at once; ``cache_ttl_s`` ages entries out.
2. **real**: otherwise, while the budget lasts, the real engine searches it and the result is
   stored. The budget (``budget_calls`` queries, or ``budget_dollars`` at ``price_per_1k``) is
   reserved in the same file before the query is sent, in one ``BEGIN IMMEDIATE`` transaction, so
   concurrent requests, threads and processes sharing the file never overspend, and the spend
   survives restarts. A reservation is never refunded (a query that was sent may have been billed).
3. **simulator**: past the budget, the simulated engine the other fields describe (loaded on the
   first fallback), or, with ``fallback: none``, an error result saying the budget is spent.

Every result carries ``source``: ``cache``, ``real``, ``simulator`` or ``refused`` (past the
budget with no fallback). Identical queries in flight
at the same time in one process wait for the first instead of paying again. The file uses WAL
(readers never block the writer) with ``synchronous=FULL``: a process killed mid-write leaves the
last committed rows intact and no partial row. Failed real searches are returned, not cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from zerosearch.engines.base import Document, Engine, SearchRequest, SearchResult, failed

SOURCES = ("cache", "real", "simulator", "refused")
_DENSE_ENCODER = "embedded:minilm"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    settings TEXT NOT NULL,
    documents TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    calls INTEGER NOT NULL,
    dollars REAL NOT NULL
);
INSERT OR IGNORE INTO budget (id, calls, dollars) VALUES (0, 0, 0.0);
"""


def normalise_query(query: str) -> str:
    """The form a query is cached under: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def default_cache_path() -> Path:
    from zerosearch.models import cache_dir

    return cache_dir() / "hybrid" / "search-cache.sqlite"


class SearchCache:
    """Cached real results and the budget ledger, in one SQLite file (one connection per thread)."""

    def __init__(self, path: str | Path, ttl_s: float | None = None):
        self.path, self.ttl_s = Path(path).expanduser(), ttl_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def get(self, key: str) -> list[Document] | None:
        """The cached documents for ``key`` (None when absent or older than the TTL)."""
        row = self._db().execute("SELECT documents, created FROM results WHERE key = ?",
                                 (key,)).fetchone()
        if row is None or (self.ttl_s is not None and time.time() - row[1] > self.ttl_s):
            return None
        return [Document(**d) for d in json.loads(row[0])]

    def put(self, key: str, query: str, settings: dict[str, Any], documents: Sequence[Document]) -> None:
        """Store one real result (one autocommitted statement: all of the row or none of it)."""
        payload = json.dumps([d.__dict__ for d in documents], ensure_ascii=False)
        self._db().execute(
            "INSERT OR REPLACE INTO results (key, query, settings, documents, created) "
            "VALUES (?, ?, ?, ?, ?)", (key, query, json.dumps(settings, sort_keys=True), payload,
                                       time.time()))

    def reserve(self, wanted: int, max_calls: int | None, max_dollars: float | None,
                price_per_1k: float) -> int:
        """Reserve up to ``wanted`` real queries within the caps; returns how many were granted."""
        if wanted <= 0:
            return 0
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across threads and processes
        try:
            calls, dollars = db.execute("SELECT calls, dollars FROM budget WHERE id = 0").fetchone()
            granted = wanted
            if max_calls is not None:
                granted = min(granted, max(max_calls - calls, 0))
            if max_dollars is not None and price_per_1k > 0:
                left = (max_dollars - dollars) * 1000.0 / price_per_1k
                granted = min(granted, max(math.floor(left + 1e-9), 0))
            if granted:
                db.execute("UPDATE budget SET calls = calls + ?, dollars = dollars + ? WHERE id = 0",
                           (granted, granted * price_per_1k / 1000.0))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return granted

    def spent(self) -> tuple[int, float]:
        """(queries, dollars) spent on the real engine over the file's whole life."""
        calls, dollars = self._db().execute("SELECT calls, dollars FROM budget WHERE id = 0").fetchone()
        return int(calls), float(dollars)

    def size(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.ProgrammingError:  # closed from another thread already
                    pass
            self._connections.clear()
        self._local = threading.local()


class HybridEngine:
    """Cache → real engine within the budget → simulator (see the module docstring)."""

    name = "hybrid"

    def __init__(self, real: Engine, cache: SearchCache, settings: dict[str, Any], *,
                 simulator: Callable[[], Engine] | None = None, budget_calls: int | None = None,
                 budget_dollars: float | None = None, price_per_1k: float = 0.0, log=print):
        """``settings``: what, besides the query and top-k, makes two real results differ (the cache
        key); ``simulator``: builds the fallback engine on first use (None = fallback ``none``)."""
        self.real, self.cache, self.settings = real, cache, settings
        self._make_simulator, self._simulator = simulator, None
        self.budget_calls, self.budget_dollars, self.price_per_1k = budget_calls, budget_dollars, price_per_1k
        self.log = log
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self.counts = {"hits": 0, "misses": 0, "real": 0, "simulator": 0, "budget_refused": 0,
                       "real_errors": 0}

    def key(self, request: SearchRequest) -> str:
        material = json.dumps({"query": normalise_query(request.query), "topk": request.topk,
                               **self.settings}, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def _cached(self, request: SearchRequest, documents: list[Document], started: float) -> SearchResult:
        return SearchResult(query=request.query, documents=documents[:request.topk],
                            engine=self.real.name, topk=request.topk, row_id=request.row_id,
                            latency_s=time.perf_counter() - started, source="cache")

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        started = time.perf_counter()
        results: list[SearchResult | None] = [None] * len(requests)
        keys = [self.key(r) for r in requests]
        pending: dict[str, list[int]] = {}  # key → indices of the requests waiting for it
        for i, (request, key) in enumerate(zip(requests, keys)):
            documents = self.cache.get(key)
            if documents is not None:
                results[i] = self._cached(request, documents, started)
            else:
                pending.setdefault(key, []).append(i)
        self._count("hits", len(requests) - sum(len(v) for v in pending.values()))
        while pending:
            owned, waits = [], []
            with self._lock:
                for key in pending:
                    if key in self._inflight:
                        waits.append(self._inflight[key])
                    else:
                        self._inflight[key] = threading.Event()
                        owned.append(key)
            try:
                if owned:
                    self._fetch(requests, [pending[k] for k in owned], owned, results, started)
            finally:
                with self._lock:
                    for key in owned:
                        self._inflight.pop(key).set()
            for key in owned:
                del pending[key]
            for event in waits:  # another request was fetching the same query: use its result
                event.wait()
            for key in list(pending):
                documents = self.cache.get(key)
                if documents is not None:
                    indices = pending.pop(key)
                    for i in indices:
                        results[i] = self._cached(requests[i], documents, started)
                    self._count("hits", len(indices))
        return results  # type: ignore[return-value]

    def _fetch(self, requests: Sequence[SearchRequest], groups: list[list[int]], keys: list[str],
               results: list[SearchResult | None], started: float) -> None:
        """Search the owned misses: the first ones the budget allows for real, the rest simulated."""
        self._count("misses", sum(len(g) for g in groups))
        granted = self.cache.reserve(len(groups), self.budget_calls, self.budget_dollars,
                                     self.price_per_1k)
        if granted:
            firsts = [requests[g[0]] for g in groups[:granted]]
            real = self.real.search(firsts)
            self._count("real", granted)
            for group, key, result in zip(groups[:granted], keys, real):
                result.source = "real"
                if result.ok:
                    self.cache.put(key, result.query, self.settings, result.documents)
                else:
                    self._count("real_errors")
                for j, i in enumerate(group):
                    results[i] = result if j == 0 else replace(
                        result, query=requests[i].query, row_id=requests[i].row_id, documents=list(
                            result.documents))
        rest = [i for g in groups[granted:] for i in g]
        if not rest:
            return
        self._count("budget_refused", len(rest))
        if self._make_simulator is None:
            calls, dollars = self.cache.spent()
            for i in rest:
                results[i] = failed(requests[i], self.name, (
                    f"the real-search budget is spent ({calls} queries, ${dollars:.4f}) and the "
                    "fallback is none"), "unavailable", latency_s=time.perf_counter() - started)
                results[i].source = "refused"
            return
        simulated = self._simulator_engine().search([requests[i] for i in rest])
        self._count("simulator", len(rest))
        for i, result in zip(rest, simulated):
            result.source = "simulator"
            results[i] = result

    def _simulator_engine(self) -> Engine:
        with self._lock:
            if self._simulator is None:
                self.log("hybrid: the real-search budget is spent; loading the fallback simulator")
                self._simulator = self._make_simulator()
            return self._simulator

    def stats(self) -> dict[str, Any]:
        """Counts since start (hits, misses, real, simulator…) and the file's lifetime spend."""
        calls, dollars = self.cache.spent()
        with self._lock:
            counts = dict(self.counts)
        return {**counts, "spent_calls": calls, "spent_dollars": dollars,
                "cached_results": self.cache.size()}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "real": self.real.describe(), "cache_path": str(self.cache.path),
                "ttl_s": self.cache.ttl_s, "budget_calls": self.budget_calls,
                "budget_dollars": self.budget_dollars, "price_per_1k": self.price_per_1k,
                "fallback": "simulated" if self._make_simulator else "none", **self.stats()}

    def register_metrics(self, registry) -> None:
        """Expose the counts and the lifetime spend on the server's Prometheus registry."""
        from prometheus_client import Gauge

        help_text = {"hits": "cache hits", "misses": "cache misses",
                     "real": "queries sent to the real engine", "simulator": "simulator fallbacks",
                     "budget_refused": "misses past the budget", "real_errors": "failed real queries"}
        for name, text in help_text.items():
            Gauge(f"zerosearch_hybrid_{name}", f"Hybrid engine: {text} since start",
                  registry=registry).set_function(lambda name=name: self.counts[name])
        Gauge("zerosearch_hybrid_spent_calls", "Hybrid engine: real queries spent (all runs)",
              registry=registry).set_function(lambda: self.cache.spent()[0])
        Gauge("zerosearch_hybrid_spent_dollars", "Hybrid engine: dollars spent (all runs)",
              registry=registry).set_function(lambda: self.cache.spent()[1])

    def close(self) -> None:
        self.real.close()
        if self._simulator is not None:
            self._simulator.close()
        self.cache.close()


def real_settings(cfg) -> dict[str, Any]:
    """What besides the query and top-k decides a real engine's answer (part of the cache key)."""
    settings: dict[str, Any] = {"real": cfg.real}
    if cfg.real in ("bm25", "dense"):
        settings["corpus"] = str(Path(cfg.corpus).expanduser().resolve())
    if cfg.real == "dense":
        settings["encoder"] = _DENSE_ENCODER
    if cfg.real == "web":
        settings["url"] = cfg.web_url
    if cfg.real == "remote":
        settings["url"] = cfg.remote_url
    return settings


def build_hybrid(cfg, log=print) -> HybridEngine:
    """The hybrid engine an :class:`~zerosearch.engines.factory.EngineConfig` of kind hybrid describes."""
    from zerosearch.engines.factory import build_engine

    from zerosearch.engines.factory import EngineConfig

    # ``model`` names the fallback simulator here; a dense real engine keeps its default encoder
    real = build_engine(replace(cfg, kind=cfg.real, model=EngineConfig.model), log=log)
    simulator = None
    if cfg.fallback == "simulated":
        def simulator():
            return build_engine(replace(cfg, kind="simulated"), log=log)
    cache = SearchCache(cfg.cache_path or default_cache_path(), cfg.cache_ttl_s)
    return HybridEngine(real, cache, real_settings(cfg), simulator=simulator,
                        budget_calls=cfg.budget_calls, budget_dollars=cfg.budget_dollars,
                        price_per_1k=cfg.price_per_1k, log=log)
