"""What the search service's /health reports about its back end: when a call last got an answer,
how many calls in a row failed (unavailable or timed out), and a description of the engine with
file paths and URLs left out for callers that did not authenticate."""

from __future__ import annotations

import threading
import time
from typing import Any

from zerosearch.engines.base import SearchResult


class BackendHealth:
    """What /health knows about the back end: the last call that got an answer from it, and how
    many calls in a row it failed (unavailable or timed out)."""

    def __init__(self) -> None:
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.last_probe = 0.0
        self._lock = threading.Lock()

    def record(self, results: list[SearchResult] | None, error: str | None = None) -> None:
        down = results is None or all(r.error_kind in ("unavailable", "timeout") for r in results)
        with self._lock:
            if down:
                self.consecutive_failures += 1
                self.last_failure = time.time()
                self.last_error = error or (results[0].error if results else None)
            else:
                self.consecutive_failures = 0
                self.last_success = time.time()

    def usable(self, threshold: int) -> bool:
        return self.consecutive_failures < threshold

    def report(self, public: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "last_success_unix": self.last_success, "last_failure_unix": self.last_failure,
            "consecutive_failures": self.consecutive_failures}
        if not public:
            out["last_error"] = self.last_error
        return out


def public_description(description: dict[str, Any]) -> dict[str, Any]:
    """``describe()`` without what looks like a file path or URL (for unauthenticated /health)."""
    def private(value: Any) -> bool:
        if isinstance(value, str):
            return "/" in value or "\\" in value
        if isinstance(value, (list, tuple)):
            return any(private(v) for v in value)
        return False

    hidden = {"corpus", "index", "url", "urls", "base_url", "index_path", "path"}
    return {k: v for k, v in description.items() if k not in hidden and not private(v)}
