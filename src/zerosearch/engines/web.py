"""A SerpAPI-style web search adapter (optional; needs an API key).

Sends ``GET {base_url}?q=…&api_key=…&num=k&engine=google`` and reads ``organic_results`` (title,
snippet). The key comes from the config or ``$SERPAPI_API_KEY``; without one the engine refuses to
start and says how to give one. ``base_url`` points it at any compatible service (tests use a local
fake server). Retries go through :mod:`zerosearch.retry` (401/403 are final: a wrong key).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

from zerosearch import retry
from zerosearch.engines.base import Document, EngineError, SearchRequest, SearchResult, failed

DEFAULT_URL = "https://serpapi.com/search.json"
#: Everything but a refused key is worth another attempt (the API answers 5xx and 429 under load).
_RETRY_STATUS = frozenset(range(400, 600)) - {401, 403}


class WebEngine:
    """Real web results through a SerpAPI-compatible HTTP API."""

    name = "web"

    def __init__(self, api_key: str | None = None, base_url: str = DEFAULT_URL,
                 policy: retry.RetryPolicy | None = None, max_concurrency: int = 8):
        self.api_key = api_key or os.environ.get("SERPAPI_API_KEY")
        if not self.api_key:
            raise EngineError("the web engine needs a SerpAPI key: pass --web-api-key or set "
                              "SERPAPI_API_KEY")
        self.base_url = base_url
        self.policy = policy or retry.RetryPolicy()
        self._client = httpx.Client()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="web")

    def _one(self, request: SearchRequest, deadline: retry.Deadline | None) -> SearchResult:
        params = {"q": request.query, "api_key": self.api_key, "num": request.topk, "engine": "google"}
        outcome = retry.call(retry.http_attempt(
            lambda t: self._client.get(self.base_url, params=params, timeout=t), "web search",
            _RETRY_STATUS), self.policy, deadline)
        if not outcome.ok:
            if outcome.kind == "bad_request":
                outcome.error = f"web search refused the API key: {outcome.error}"
            return failed(request, self.name, outcome.error, outcome.kind,
                          latency_s=outcome.latency_s, retries=outcome.retries)
        organic = outcome.value.json().get("organic_results", [])
        docs = [Document(text=" ".join(str(r.get("snippet", "")).split()),
                         title=r.get("title"), id=r.get("link"))
                for r in organic if r.get("snippet") or r.get("title")][: request.topk]
        return SearchResult(query=request.query, documents=docs, engine=self.name,
                            topk=request.topk, latency_s=outcome.latency_s,
                            retries=outcome.retries, row_id=request.row_id)

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        deadline = retry.current()  # read here: the pool's threads do not share this context
        return list(self._pool.map(lambda r: self._one(r, deadline), requests))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "base_url": self.base_url}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
