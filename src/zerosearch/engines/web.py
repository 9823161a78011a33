"""A SerpAPI-style web search adapter (optional; needs an API key).

Sends ``GET {base_url}?q=…&api_key=…&num=k&engine=google`` and reads ``organic_results`` (title,
snippet). The key comes from the config or ``$SERPAPI_API_KEY``; without one the engine refuses to
start and says how to give one. ``base_url`` points it at any compatible service (tests use a local
fake server).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

from zerosearch.engines.base import Document, EngineError, SearchRequest, SearchResult, failed

DEFAULT_URL = "https://serpapi.com/search.json"


class WebEngine:
    """Real web results through a SerpAPI-compatible HTTP API."""

    name = "web"

    def __init__(self, api_key: str | None = None, base_url: str = DEFAULT_URL,
                 timeout_s: float = 20.0, max_retries: int = 2, max_concurrency: int = 8):
        self.api_key = api_key or os.environ.get("SERPAPI_API_KEY")
        if not self.api_key:
            raise EngineError("the web engine needs a SerpAPI key: pass --web-api-key or set "
                              "SERPAPI_API_KEY")
        self.base_url, self.max_retries = base_url, max_retries
        self._client = httpx.Client(timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="web")

    def _one(self, request: SearchRequest) -> SearchResult:
        started = time.perf_counter()
        error, kind = "", "unavailable"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                response = self._client.get(self.base_url, params={
                    "q": request.query, "api_key": self.api_key, "num": request.topk,
                    "engine": "google"})
            except httpx.TimeoutException as err:
                error, kind = f"web search timed out: {err!r}", "timeout"
                continue
            except httpx.HTTPError as err:
                error, kind = f"web search unreachable: {err!r}", "unavailable"
                continue
            if response.status_code in (401, 403):
                return failed(request, self.name, f"web search refused the API key "
                              f"(HTTP {response.status_code})", "bad_request",
                              latency_s=time.perf_counter() - started)
            if response.status_code >= 400:
                error = f"web search answered HTTP {response.status_code}"
                continue
            organic = response.json().get("organic_results", [])
            docs = [Document(text=" ".join(str(r.get("snippet", "")).split()),
                             title=r.get("title"), id=r.get("link"))
                    for r in organic if r.get("snippet") or r.get("title")][: request.topk]
            return SearchResult(query=request.query, documents=docs, engine=self.name,
                                topk=request.topk, latency_s=time.perf_counter() - started,
                                retries=attempt, row_id=request.row_id)
        return failed(request, self.name, error, kind, latency_s=time.perf_counter() - started,
                      retries=self.max_retries)

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        return list(self._pool.map(self._one, requests))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "base_url": self.base_url}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
