"""The search service: any engine over HTTP (FastAPI + uvicorn).

- ``POST /search``: a batch of :class:`~zerosearch.engines.base.SearchRequest` → results (with the
  mode used, timing and per-request errors).
- ``POST /retrieve``: the Search-R1 retriever API, so Search-R1/veRL-style trainers can use any of
  our engines (a simulated one included) unchanged. Optional ``questions`` / ``golden_answers`` /
  ``mode`` / ``noise_prob`` fields give a simulator its context.
- ``GET /health``, ``GET /metrics`` (Prometheus text).

Bad input is a 4xx with a message; when every request of a batch failed in the back end the answer
is a 503 (unavailable) or 504 (timeout), and the whole call is bounded by ``request_timeout_s``, so a
dead or slow back end never hangs a client. Partial failures are a 200 whose failed results carry
``error``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from zerosearch.engines.base import Engine, SearchRequest, SearchResult


@dataclass
class ServerConfig:
    """How the search service listens and what it accepts."""

    host: str = "127.0.0.1"
    """Bind address; loopback unless you mean to expose it (then set ``token``)."""
    port: int = 6001
    """TCP port."""
    token: str | None = None
    """If set, every call but /health needs ``Authorization: Bearer <token>``."""
    max_batch: int = 256
    """Most requests (queries) in one call."""
    max_query_chars: int = 2000
    """Longest query accepted."""
    max_topk: int = 50
    """Largest top-k accepted."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted."""
    request_timeout_s: float = 300.0
    """Upper bound on one call; past it the client gets a 504."""


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
    queries: list[StrictStr]
    topk: StrictInt = 5
    return_scores: StrictBool = False
    questions: list[StrictStr] | None = None
    golden_answers: list[list[StrictStr]] | None = None
    mode: Literal["useful", "noisy"] | None = None
    noise_prob: StrictFloat | StrictInt | None = None


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
        self.retries = Counter("zerosearch_backend_retries", "Back-end retries spent", registry=r)

    def observe(self, results: list[SearchResult]) -> None:
        for result in results:
            self.queries.labels(result.mode or "real").inc()
            if result.error:
                self.errors.labels(result.error_kind or "internal").inc()
            else:
                self.shortfall.inc(result.shortfall)
            self.retries.inc(result.retries)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    cfg = config or ServerConfig()
    metrics = _Metrics()
    app = FastAPI(title="zerosearch search service", version="0.1.0")
    app.state.engine, app.state.config, app.state.metrics = engine, cfg, metrics
    register = getattr(engine, "register_metrics", None)  # engines with their own counters (hybrid)
    if register is not None:
        register(metrics.registry)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path
        if cfg.token and endpoint != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
                response = _error(401, "missing or wrong bearer token")
                metrics.requests.labels(endpoint, "401").inc()
                return response
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_body_bytes:
            metrics.requests.labels(endpoint, "413").inc()
            return _error(413, f"request body of {length} bytes exceeds {cfg.max_body_bytes}")
        response = await call_next(request)
        if endpoint in ("/search", "/retrieve"):
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

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
        try:
            results = await asyncio.wait_for(run_in_threadpool(engine.search, requests),
                                             cfg.request_timeout_s)
        except asyncio.TimeoutError:
            metrics.errors.labels("timeout").inc(len(requests))
            return None, _error(504, f"the engine did not answer within {cfg.request_timeout_s}s")
        metrics.observe(results)
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
        n = len(body.queries)
        for name in ("questions", "golden_answers"):
            values = getattr(body, name)
            if values is not None and len(values) != n:
                return _error(422, f"{name} has {len(values)} entries for {n} queries")
        requests = [SearchRequest(
            query=q, topk=body.topk, mode=body.mode, noise_prob=body.noise_prob, row_id=i,
            question=body.questions[i] if body.questions else "",
            golden_answers=body.golden_answers[i] if body.golden_answers else [])
            for i, q in enumerate(body.queries)]
        results, failure = await run(requests)
        if failure:
            return failure
        if any(r.error for r in results):  # the Search-R1 format has no per-query error field
            bad = next(r for r in results if r.error)
            return _error(503, f"the {engine.name} engine failed for query {bad.query!r}: {bad.error}")
        out: list[list[Any]] = []
        for result in results:
            docs = []
            for j, doc in enumerate(result.documents):
                contents = f'"{doc.title}"\n{doc.text}' if doc.title else doc.text
                item = {"id": doc.id or f"{result.engine}-{j}", "contents": contents}
                docs.append({"document": item, "score": doc.score or 0.0} if body.return_scores
                            else item)
            out.append(docs)
        return {"result": out}

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.describe()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type=CONTENT_TYPE_LATEST)

    return app


def serve(engine: Engine, config: ServerConfig, log=print) -> None:
    """Run the service until interrupted (uvicorn)."""
    import uvicorn

    if not _is_loopback(config.host) and not config.token:
        log(f"warning: listening on {config.host} with no bearer token; anyone who can reach this "
            "port can use the engine")
    try:
        uvicorn.run(create_app(engine, config), host=config.host, port=config.port,
                    log_level="warning", access_log=False)
    finally:
        engine.close()
