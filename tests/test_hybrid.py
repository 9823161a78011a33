"""The hybrid engine: SQLite cache, a real-search budget that holds exactly under concurrency and
across restarts, the simulator past it, and a cache file that survives a SIGKILL mid-write.

The paid web API is a local fake SerpAPI on loopback that counts every query it answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from conftest import zerosearch_serve
from zerosearch.engines import EngineConfig, SearchRequest, build_engine
from zerosearch.engines.base import EngineError
from zerosearch.engines.hybrid import normalise_query


class _PaidAPI(BaseHTTPRequestHandler):
    """SerpAPI-shaped answers; ``queries`` records every billed query, ``delay_s`` slows each."""

    queries: list[str] = []
    lock = threading.Lock()
    delay_s = 0.0

    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        time.sleep(self.delay_s)
        with self.lock:
            self.queries.append(q["q"][0])
        body = json.dumps({"organic_results": [
            {"title": f"T{i}", "snippet": f"{q['q'][0]} snippet {i}", "link": f"http://x/{i}"}
            for i in range(int(q.get("num", ["5"])[0]))]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def paid_api(delay_s: float = 0.0):
    handler = type("PaidAPI", (_PaidAPI,), {"queries": [], "delay_s": delay_s})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/search.json", handler
    finally:
        server.shutdown()
        server.server_close()


def _hybrid(url, path, **kw) -> EngineConfig:
    return EngineConfig(kind="hybrid", real="web", web_url=url, web_api_key="k",
                        cache_path=str(path), **kw)


def test_cache_hits_normalised_queries_and_budget_survives_a_restart(tmp_path):
    db = tmp_path / "cache.sqlite"
    with paid_api() as (url, api):
        engine = build_engine(_hybrid(url, db, budget_calls=3, fallback="none"))
        first = engine.search([SearchRequest("Eiffel  Tower", topk=3), SearchRequest("nile")])
        assert [r.source for r in first] == ["real", "real"] and all(r.ok for r in first)
        again = engine.search([SearchRequest("  eiffel tower ", topk=3)])[0]
        assert again.source == "cache" and [d.title for d in again.documents] == ["T0", "T1", "T2"]
        assert sorted(api.queries) == ["Eiffel  Tower", "nile"]  # sent concurrently; the second call paid nothing
        # same query, other top-k: another key (the cached result holds fewer documents)
        assert engine.search([SearchRequest("eiffel tower", topk=5)])[0].source == "real"
        engine.close()
        restarted = build_engine(_hybrid(url, db, budget_calls=3, fallback="none"))
        assert restarted.stats()["spent_calls"] == 3
        assert restarted.search([SearchRequest("nile")])[0].source == "cache"
        over = restarted.search([SearchRequest("danube")])[0]
        assert over.source == "refused" and over.error_kind == "unavailable"
        assert "budget is spent (3 queries" in over.error
        assert len(api.queries) == 3
        stats = restarted.stats()
        assert stats["hits"] == 1 and stats["misses"] == 1 and stats["budget_refused"] == 1
        restarted.close()


def test_duplicates_in_one_batch_pay_once_and_ttl_expires(tmp_path):
    with paid_api() as (url, api):
        engine = build_engine(_hybrid(url, tmp_path / "c.sqlite", cache_ttl_s=0.5))
        out = engine.search([SearchRequest("rome", row_id=1), SearchRequest("ROME", row_id=2)])
        assert api.queries == ["rome"] and [r.row_id for r in out] == [1, 2]
        assert [r.query for r in out] == ["rome", "ROME"] and out[1].documents == out[0].documents
        assert engine.search([SearchRequest("rome")])[0].source == "cache"
        time.sleep(0.6)
        assert engine.search([SearchRequest("rome")])[0].source == "real"
        assert api.queries == ["rome", "rome"]
        engine.close()


def test_dollar_budget(tmp_path):
    with paid_api() as (url, api):
        engine = build_engine(_hybrid(url, tmp_path / "c.sqlite", budget_dollars=0.05,
                                      price_per_1k=15.0, fallback="none"))
        results = engine.search([SearchRequest(f"q{i}") for i in range(5)])
        # $0.015 a query: three fit in $0.05, the fourth would make $0.06
        assert [r.source for r in results].count("real") == 3 and len(api.queries) == 3
        assert engine.stats()["spent_dollars"] == pytest.approx(0.045)
        engine.close()


def test_bad_hybrid_configs_are_named():
    with pytest.raises(EngineError, match="real engine must be one of"):
        EngineConfig(kind="hybrid", real="simulated")
    with pytest.raises(EngineError, match="needs a price"):
        EngineConfig(kind="hybrid", real="web", budget_dollars=1.0)
    with pytest.raises(EngineError, match="needs a corpus"):
        EngineConfig(kind="hybrid", real="bm25")
    assert normalise_query(" The\u00a0Nile\tRiver ") == "the nile river"


def _metric(text: str, name: str) -> float:
    line = next(l for l in text.splitlines() if l.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.slow
def test_cap_holds_exactly_under_32_concurrent_requests_and_metrics(tmp_path):
    db = tmp_path / "cache.sqlite"
    with paid_api(delay_s=0.05) as (url, api):
        server = zerosearch_serve(
            "--engine", "hybrid", "--real", "web", "--web-url", url, "--web-api-key", "k",
            "--cache-path", str(db), "--budget-calls", "10", "--price-per-1k", "5",
            "--sim-model", "embedded:tiny-random", "--max-new-tokens", "12", "--seed", "0")
        try:
            def one(i):
                return httpx.post(server.url + "/search", json={"requests": [
                    {"query": f"question number {i}", "question": f"Q{i}?", "golden_answers": ["x"],
                     "mode": "useful"}]}, timeout=120).json()["results"][0]

            with ThreadPoolExecutor(32) as pool:
                results = list(pool.map(one, range(32)))
            sources = [r["source"] for r in results]
            assert sources.count("real") == 10 and sources.count("simulator") == 22
            assert len(api.queries) == 10 and len(set(api.queries)) == 10
            assert {r["engine"] for r in results if r["source"] == "simulator"} == {"simulated"}
            text = httpx.get(server.url + "/metrics").text
            assert _metric(text, "zerosearch_hybrid_spent_calls") == 10
            assert _metric(text, "zerosearch_hybrid_spent_dollars") == pytest.approx(0.05)
            assert _metric(text, "zerosearch_hybrid_simulator") == 22
            assert _metric(text, "zerosearch_hybrid_misses") == 32
            # Which 10 of the 32 concurrent queries got the paid engine is a race; ask again for one that did.
            paid = next(i for i, r in enumerate(results) if r["source"] == "real")
            again = one(paid)
            assert again["source"] == "cache" and len(api.queries) == 10
            assert _metric(httpx.get(server.url + "/metrics").text, "zerosearch_hybrid_hits") == 1
        finally:
            server.kill()


@pytest.mark.slow
def test_cache_survives_sigkill_mid_write(tmp_path):
    db = tmp_path / "cache.sqlite"
    with paid_api() as (url, api):
        flags = ("--engine", "hybrid", "--real", "web", "--web-url", url, "--web-api-key", "k",
                 "--cache-path", str(db), "--fallback", "none")
        server = zerosearch_serve(*flags)
        stop = threading.Event()

        def hammer(worker):
            i = 0
            while not stop.is_set():
                batch = [{"query": f"w{worker} q{i + j} " + "long text " * 40} for j in range(8)]
                i += 8
                try:
                    httpx.post(server.url + "/search", json={"requests": batch}, timeout=10)
                except httpx.HTTPError:
                    return  # the server is gone
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(api.queries) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGKILL)  # while the workers are still writing
        server.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
        paid = -1
        while paid != len(api.queries):  # a request the killed server had sent may still land
            paid = len(api.queries)
            time.sleep(0.5)
        assert paid >= 200

        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT query, documents FROM results").fetchall()
        spent = con.execute("SELECT calls FROM budget").fetchone()[0]
        con.close()
        assert 0 < len(rows) <= spent and spent >= paid  # reserved (committed) before sending
        for query, documents in rows:  # every row whole: parseable, five documents of its query
            docs = json.loads(documents)
            assert len(docs) == 5 and all(d["text"].startswith(query) for d in docs)

        server = zerosearch_serve(*flags)  # restarted on the same file: every stored row is a hit
        try:
            sample = [{"query": q} for q, _ in rows[:20]]
            before = len(api.queries)
            out = httpx.post(server.url + "/search", json={"requests": sample}, timeout=30).json()
            assert {r["source"] for r in out["results"]} == {"cache"}
            assert len(api.queries) == before  # hits pay nothing
        finally:
            server.kill()
