"""A client for another zerosearch search server (``POST /search``).

Lets a trainer on one machine use engines served elsewhere (for example a simulator on a GPU node).
Whole-batch failures (server down, timeout, HTTP errors) become per-request errors after bounded
retries; nothing hangs.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Sequence

import httpx

from zerosearch.engines.base import SearchRequest, SearchResult, failed


class RemoteEngine:
    """Search through a running ``zerosearch serve``."""

    name = "remote"

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 2, backoff_s: float = 0.5):
        self.url = url.rstrip("/")
        self.max_retries, self.backoff_s = max_retries, backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s)

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        if not requests:
            return []
        body = {"requests": [asdict(r) for r in requests]}
        error, kind = "", "unavailable"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post(f"{self.url}/search", json=body)
            except httpx.TimeoutException as err:
                error, kind = f"{self.url} timed out: {err!r}", "timeout"
                continue
            except httpx.HTTPError as err:
                error, kind = f"{self.url} unreachable: {err!r}", "unavailable"
                continue
            if response.status_code in (502, 503, 504):
                error = f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}"
                kind = "timeout" if response.status_code == 504 else "unavailable"
                continue
            if response.status_code >= 400:
                return [failed(r, self.name, f"{self.url} rejected the request "
                               f"(HTTP {response.status_code}): {response.text[:300]}",
                               "bad_request") for r in requests]
            return [SearchResult.from_dict(d) for d in response.json()["results"]]
        return [failed(r, self.name, error, kind, retries=self.max_retries) for r in requests]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self.url}

    def close(self) -> None:
        self._client.close()
