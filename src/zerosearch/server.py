"""The search service: any engine over HTTP (FastAPI + uvicorn).

- ``POST /search``: a batch of :class:`~zerosearch.engines.base.SearchRequest` → results (with the
  mode used, timing and per-request errors).
- ``POST /retrieve``: the Search-R1 retriever API, so Search-R1/veRL-style trainers can use any of
  our engines (a simulated one included) unchanged. Optional ``questions`` / ``golden_answers`` /
  ``mode`` / ``noise_prob`` fields give a simulator its context. Also accepts ZeroSearch's
  local-retrieval form ``{"query": …, "top_k": k}``; an empty query gets an empty result.
- ``GET|POST /noise``: the noise probability a simulated engine uses for /retrieve clients that send
  none (a Search-R1 trainer), so a curriculum can be advanced from outside.
- ``GET /health`` (the back end's state; 503 when it is not usable), ``GET /metrics`` (Prometheus).

Bad input is a 4xx with a message; when every request of a batch failed in the back end the answer
is a 503 (unavailable) or 504 (timeout), and the whole call is bounded by ``request_timeout_s``, so a
dead or slow back end never hangs a client; a call answered 504 cancels its back-end work
(:mod:`zerosearch.retry`), so no retries pile up behind it. Partial failures are a 200 whose failed
results carry ``error``. Body size, read times, connections and body shape are guarded before any
handler runs (:mod:`zerosearch.edge`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from zerosearch import retry
from zerosearch.edge import BodyLimits, Edge, EdgeConfig, OnceLog, SafeJSONResponse, guarded_h11
from zerosearch.engines.base import Engine, SearchRequest, SearchResult
from zerosearch.health import BackendHealth, public_description


@dataclass
class ServerConfig:
    """How the search service listens and what it accepts."""

    host: str = "127.0.0.1"
    """Bind address; loopback unless you mean to expose it (then set ``token``)."""
    port: int = 6001
    """TCP port."""
    token: str | None = None
    """If set, every call but /health needs ``Authorization: Bearer <token>``."""
    max_batch: int = 2560
    """Most requests (queries) in one call (Search-R1's GRPO default sends 512 prompts x 5)."""
    max_query_chars: int = 2000
    """Longest query accepted."""
    max_topk: int = 50
    """Largest top-k accepted."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted."""
    request_timeout_s: float = 60.0
    """Upper bound on one call, all back-end attempts included; past it the client gets a 504 and
    the call's back-end work is cancelled."""
    header_timeout_s: float = 10.0
    """A connection must send complete request headers within this time (after it opens or after
    its previous response); else it is closed."""
    body_timeout_s: float = 30.0
    """A request body must arrive whole within this time; else 408."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection is closed after this time."""
    max_connections: int = 512
    """Open connections at most; past it a new connection evicts the oldest one still waiting for
    its request headers, or is closed at once when every connection is busy."""
    max_json_items: int = 10_000
    """Most elements in any one JSON array or object of a body (checked before the schema)."""
    max_json_depth: int = 16
    """Deepest JSON nesting accepted."""
    health_failures: int = 3
    """/health answers 503 after this many calls in a row failed in the back end (unavailable or
    timed out), until a call or a probe succeeds."""
    health_probe_s: float = 5.0
    """While unhealthy, /health probes the back end with one search at most this often (bounded by
    this many seconds too)."""
    default_topk: int = 5
    """/retrieve: documents per query when the client sends no ``topk`` (or null)."""
    noise_prob: float | None = None
    """/retrieve on a simulated engine: probability of noisy documents when the client sends none
    (a Search-R1 client never does); None = useful documents. ``POST /noise`` changes it at run
    time (a trainer advancing its curriculum)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.token is not None and not self.token.strip():
            raise ValueError("the bearer token is empty; pass a real --token or leave it out")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s",
                     "health_probe_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_batch", "max_body_bytes", "max_connections", "max_json_items",
                     "max_json_depth", "health_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_prob is not None and not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")


class SearchRequestModel(BaseModel):
    query: StrictStr
    question: StrictStr = ""
    golden_answers: list[StrictStr] = Field(default_factory=list)
    topk: StrictInt = 5
    mode: Literal["useful", "noisy"] | None = None
    noise_prob: StrictFloat | StrictInt | None = None
    row_id: StrictStr | StrictInt | None = None


class SearchBody(BaseModel):
    requests: list[SearchRequestModel]


class RetrieveBody(BaseModel):
    """What Search-R1's client sends (``queries``, ``topk``, ``return_scores``) or ZeroSearch's
    local-retrieval client (``query``, ``top_k``); lenient where upstream is (``topk`` null = the
    server default, ``return_scores`` a boolean or 0/1), strict where a value is really wrong."""

    queries: list[StrictStr] | None = None
    query: StrictStr | list[StrictStr] | None = None
    topk: StrictInt | None = None
    top_k: StrictInt | None = None
    return_scores: StrictBool | Literal[0, 1] = False
    questions: list[StrictStr] | None = None
    golden_answers: list[list[StrictStr]] | None = None
    mode: Literal["useful", "noisy"] | None = None
    noise_prob: StrictFloat | StrictInt | None = None


class NoiseBody(BaseModel):
    noise_prob: StrictFloat | StrictInt | None


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zerosearch_http_requests", "HTTP calls by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("zerosearch_http_latency_seconds", "HTTP call latency",
                                 ["endpoint"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.queries = Counter("zerosearch_queries", "Queries searched, by mode", ["mode"], registry=r)
        self.errors = Counter("zerosearch_search_errors", "Queries that failed, by kind", ["kind"],
                              registry=r)
        self.shortfall = Counter("zerosearch_documents_shortfall",
                                 "Documents fewer than requested (summed over queries)", registry=r)
        self.empty_queries = Counter("zerosearch_empty_queries",
                                     "/retrieve queries that were empty (answered with no documents)",
                                     registry=r)
        self.no_context = Counter("zerosearch_retrieve_without_context",
                                  "/retrieve queries for a simulated engine that came with no "
                                  "question, gold answers or noise probability", registry=r)
        self.edge_events = Counter("zerosearch_edge_events", "Refused connections and requests, "
                                   "and unexpected errors, by kind", ["kind"], registry=r)
        r.register(_RetryCollector())

    def observe(self, results: list[SearchResult]) -> None:
        for result in results:
            self.queries.labels(result.mode or "real").inc()
            if result.error:
                self.errors.labels(result.error_kind or "internal").inc()
            else:
                self.shortfall.inc(result.shortfall)

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class _RetryCollector:
    """``zerosearch_backend_retries_total``: every retry the back-end clients of this process spent
    (counted by :mod:`zerosearch.retry` as it happens, so calls that ended in a 504 count too)."""

    def collect(self):
        yield CounterMetricFamily("zerosearch_backend_retries", "Back-end retries spent",
                                  value=retry.retries_spent())


def _error(status: int, message: str) -> JSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(engine: Engine, config: ServerConfig | None = None, log=print) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    cfg = config or ServerConfig()
    cfg.validate()
    metrics = _Metrics()
    noise = {"noise_prob": cfg.noise_prob, "warned": False}
    health_state = BackendHealth()
    events = OnceLog(lambda kind: metrics.edge_events.labels(kind.split(":")[0]).inc())
    app = FastAPI(title="zerosearch search service", version="0.1.0",
                  default_response_class=SafeJSONResponse)
    app.state.engine, app.state.config, app.state.metrics = engine, cfg, metrics
    register = getattr(engine, "register_metrics", None)  # engines with their own counters (hybrid)
    if register is not None:
        register(metrics.registry)
    app.state.events, app.state.backend_health = events, health_state
    app.add_middleware(Edge, config=EdgeConfig(
        routes=frozenset({"/search", "/retrieve", "/noise", "/health", "/metrics"}),
        max_body_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s, token=cfg.token,
        limits=BodyLimits(max_depth=cfg.max_json_depth, max_items=cfg.max_json_items,
                          max_values=max(20 * cfg.max_json_items, 200_000))),
        observe=metrics.observe_http, events=events)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return _error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        detail = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "could not parse the request body: send UTF-8 encoded JSON"
        return _error(exc.status_code, detail)

    async def run(requests: list[SearchRequest]) -> tuple[list[SearchResult] | None, JSONResponse | None]:
        if not requests:
            return None, _error(422, "no queries in the request")
        if len(requests) > cfg.max_batch:
            return None, _error(413, f"{len(requests)} queries in one call; the limit is {cfg.max_batch}")
        for i, req in enumerate(requests):
            try:
                req.validate(cfg.max_topk, cfg.max_query_chars)
            except ValueError as err:
                return None, _error(422, f"request {i}: {err}")
        deadline = retry.Deadline(cfg.request_timeout_s)
        try:
            with retry.deadline_scope(deadline):  # the task and its worker thread copy this context
                results = await asyncio.wait_for(run_in_threadpool(engine.search, requests),
                                                 cfg.request_timeout_s)
        except asyncio.TimeoutError:
            deadline.cancel()  # no further attempts or back-off sleeps for this call
            metrics.errors.labels("timeout").inc(len(requests))
            health_state.record(None, f"no answer within {cfg.request_timeout_s}s")
            return None, _error(504, f"the engine did not answer within {cfg.request_timeout_s}s")
        finally:
            deadline.cancel()
        metrics.observe(results)
        health_state.record(results)
        if all(r.error for r in results):
            kinds = {r.error_kind for r in results}
            status = 504 if kinds == {"timeout"} else 503
            return None, _error(status, f"the {engine.name} engine failed: {results[0].error}")
        return results, None

    @app.post("/search")
    async def search(body: SearchBody):
        requests = [SearchRequest(**r.model_dump()) for r in body.requests]
        results, failure = await run(requests)
        if failure:
            return failure
        return {"results": [r.to_dict() for r in results]}

    @app.post("/retrieve")
    async def retrieve(body: RetrieveBody):
        zerosearch_form = body.queries is None and body.query is not None
        if body.queries is not None and body.query is not None:
            return _error(422, "invalid request: send queries (Search-R1) or query (ZeroSearch), "
                          "not both")
        if body.queries is None and body.query is None:
            return _error(422, "invalid request: queries: field required")
        single = zerosearch_form and isinstance(body.query, str)
        queries = ([body.query] if single else body.query) if zerosearch_form else body.queries
        n = len(queries)
        if n > cfg.max_batch:
            return _error(413, f"{n} queries in one call; the limit is {cfg.max_batch}")
        for name in ("questions", "golden_answers"):
            values = getattr(body, name)
            if values is not None and len(values) != n:
                return _error(422, f"{name} has {len(values)} entries for {n} queries")
        topk = body.topk if body.topk is not None else body.top_k
        topk = cfg.default_topk if topk is None else topk
        noise_prob = body.noise_prob if body.noise_prob is not None else noise["noise_prob"]
        slots = [i for i, q in enumerate(queries) if q.strip()]  # an empty query: no documents
        metrics.empty_queries.inc(n - len(slots))
        if slots and engine.name == "simulated" and body.questions is None and body.noise_prob is None:
            metrics.no_context.inc(len(slots))
            if not noise["warned"]:
                noise["warned"] = True
                log("/retrieve: a simulated engine gets no question, gold answers or noise_prob from "
                    "this client (a Search-R1 client sends none); documents come from the query "
                    f"alone, noise_prob {noise['noise_prob']} (set it with --noise-prob or "
                    "POST /noise); counted in zerosearch_retrieve_without_context")
        requests = [SearchRequest(
            query=queries[i], topk=topk, mode=body.mode, noise_prob=noise_prob, row_id=i,
            question=body.questions[i] if body.questions else "",
            golden_answers=body.golden_answers[i] if body.golden_answers else [])
            for i in slots]
        if not 1 <= topk <= cfg.max_topk:
            return _error(422, f"topk must be between 1 and {cfg.max_topk}, got {topk}")
        found: dict[int, SearchResult] = {}
        if requests:
            results, failure = await run(requests)
            if failure:
                return failure
            if any(r.error for r in results):  # the Search-R1 format has no per-query error field
                bad = next(r for r in results if r.error)
                return _error(503, f"the {engine.name} engine failed for query {bad.query!r}: "
                              f"{bad.error}")
            found = dict(zip(slots, results))
        out: list[list[Any]] = []
        for i in range(n):
            docs = []
            result = found.get(i)
            for j, doc in enumerate(result.documents if result else []):
                item = {"id": doc.id or f"{result.engine}-{j}", "contents": doc.corpus_contents()}
                if zerosearch_form:
                    docs.append({**item, "title": doc.title, "text": doc.text, "score": doc.score})
                else:
                    docs.append({"document": item, "score": doc.score or 0.0} if body.return_scores
                                else item)
            out.append(docs)
        if zerosearch_form:  # ZeroSearch's client reads a bare list of {"text": …} per query
            return out[0] if single else out
        return {"result": out}

    @app.get("/noise")
    async def get_noise():
        return {"noise_prob": noise["noise_prob"]}

    @app.post("/noise")
    async def set_noise(body: NoiseBody):
        if body.noise_prob is not None and not 0.0 <= body.noise_prob <= 1.0:
            return _error(422, f"noise_prob must be in [0, 1] or null, got {body.noise_prob}")
        noise["noise_prob"] = None if body.noise_prob is None else float(body.noise_prob)
        return {"noise_prob": noise["noise_prob"]}

    async def probe() -> None:
        """One small search, bounded by ``health_probe_s``, to see whether the back end is back."""
        health_state.last_probe = time.monotonic()
        deadline = retry.Deadline(cfg.health_probe_s)
        request = SearchRequest("health check", question="Is the engine up?", golden_answers=["yes"],
                                topk=1, mode="useful")
        try:
            with retry.deadline_scope(deadline):
                results = await asyncio.wait_for(run_in_threadpool(engine.search, [request]),
                                                 cfg.health_probe_s)
            health_state.record(results)
        except asyncio.TimeoutError:
            health_state.record(None, f"health probe: no answer within {cfg.health_probe_s}s")
        finally:
            deadline.cancel()

    @app.get("/health")
    async def health(request: Request):
        if (not health_state.usable(cfg.health_failures)
                and time.monotonic() - health_state.last_probe >= cfg.health_probe_s):
            await probe()
        public = not request.scope.get("state", {}).get("authenticated", True)
        description = engine.describe()
        usable = health_state.usable(cfg.health_failures)
        body = {"status": "ok" if usable else "unavailable",
                **(public_description(description) if public else description),
                "backend_state": health_state.report(public)}
        return SafeJSONResponse(body, status_code=200 if usable else 503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type=CONTENT_TYPE_LATEST)

    return app


def uvicorn_config(engine: Engine, config: ServerConfig, log=print):
    """The uvicorn settings that serve ``engine``: the guarded h11 protocol (header read timeout,
    connection cap with eviction of the oldest connection waiting for headers) and the keep-alive
    timeout. uvicorn's own ``limit_concurrency`` is left off: it counts half-open connections too
    and would answer 503 to whole requests while a slow-client flood waits to be evicted."""
    import uvicorn

    app = create_app(engine, config, log=log)
    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                          access_log=False, timeout_keep_alive=config.keep_alive_s,
                          http=guarded_h11(config.header_timeout_s, config.max_connections,
                                           app.state.events),
                          h11_max_incomplete_event_size=64 * 1024)


def serve(engine: Engine, config: ServerConfig, log=print) -> None:
    """Run the service until interrupted (uvicorn)."""
    import logging
    import resource

    import uvicorn

    if not _is_loopback(config.host) and not config.token:
        log(f"warning: listening on {config.host} with no bearer token; anyone who can reach this "
            "port can use the engine")
    if not logging.getLogger("zerosearch").handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * config.max_connections + 256))
    if want > soft:  # room for max_connections sockets plus the model's and the index's files
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        server = uvicorn.Server(uvicorn_config(engine, config, log=log))
        server.run()
        if not server.started:  # the port is taken or cannot be bound; uvicorn logged why
            raise SystemExit(1)
    finally:
        engine.close()
