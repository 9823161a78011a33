"""A client for another zerosearch search server (``POST /search``).

Lets a trainer on one machine use engines served elsewhere (for example a simulator on a GPU node).
Whole-batch failures (server down, timeout, HTTP errors) become per-request errors after bounded
retries (:mod:`zerosearch.retry`: the request's deadline bounds every attempt); nothing hangs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import httpx

from zerosearch import retry
from zerosearch.engines.base import SearchRequest, SearchResult, failed


class RemoteEngine:
    """Search through a running ``zerosearch serve``."""

    name = "remote"

    def __init__(self, url: str, token: str | None = None, policy: retry.RetryPolicy | None = None):
        self.url = url.rstrip("/")
        self.policy = policy or retry.RetryPolicy()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers)

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        if not requests:
            return []
        body = {"requests": [asdict(r) for r in requests]}
        outcome = retry.call(retry.http_attempt(
            lambda t: self._client.post(f"{self.url}/search", json=body, timeout=t), self.url),
            self.policy)
        if not outcome.ok:
            return [failed(r, self.name, outcome.error, outcome.kind, retries=outcome.retries,
                           latency_s=outcome.latency_s) for r in requests]
        return [SearchResult.from_dict(d) for d in outcome.value.json()["results"]]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self.url}

    def close(self) -> None:
        self._client.close()
