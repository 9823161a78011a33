"""A client for any number of OpenAI-compatible chat endpoints (vLLM, SGLang, transformers serve,
llama.cpp server), with load balancing, per-attempt timeouts and bounded retries with backoff.

One pooled ``httpx.Client`` serves every call (the public code opened a new client per call and
retried forever). Requests of a batch fan out over a thread pool; each goes to the endpoint with the
fewest requests in flight, skipping endpoints that failed recently. After ``max_retries`` retries a
request fails with a clear error instead of hanging training.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from zerosearch.llm.base import Completion, GenerationParams, Message

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """Chat completions over HTTP against one or more endpoints."""

    def __init__(self, urls: Sequence[str], model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_concurrency: int = 64, cooldown_s: float = 5.0):
        if not urls:
            raise ValueError("OpenAIBackend needs at least one endpoint URL")
        self.urls = [self._base(u) for u in urls]
        self.model = model
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.cooldown_s = cooldown_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=max_concurrency,
                                max_keepalive_connections=max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai")
        self._lock = threading.Lock()
        self._in_flight = {u: 0 for u in self.urls}
        self._down_until = {u: 0.0 for u in self.urls}
        self._rng = random.Random()

    @staticmethod
    def _base(url: str) -> str:
        url = url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        return url.rstrip("/")

    def _pick(self) -> str:
        with self._lock:
            now = time.monotonic()
            alive = [u for u in self.urls if self._down_until[u] <= now] or self.urls
            url = min(alive, key=lambda u: (self._in_flight[u], self._rng.random()))
            self._in_flight[url] += 1
            return url

    def _release(self, url: str, failed: bool) -> None:
        with self._lock:
            self._in_flight[url] -= 1
            if failed:
                self._down_until[url] = time.monotonic() + self.cooldown_s

    def _model_name(self) -> str:
        if self.model is None:
            url = self._pick()
            try:
                response = self._client.get(f"{url}/v1/models")
                response.raise_for_status()
                self.model = response.json()["data"][0]["id"]
            finally:
                self._release(url, failed=False)
        return self.model

    def _one(self, messages: list[Message], params: GenerationParams,
             avoid: Sequence[str] = ()) -> Completion:
        started = time.perf_counter()
        last_error, kind = "no attempt made", "unavailable"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + self._rng.random()))
            try:
                model = self._model_name()
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
                last_error, kind = (f"cannot list the served models ({err!r}); pass the model name "
                                    "with --backend-model"), "unavailable"
                continue
            url = self._pick()
            failed = True
            try:
                body = {"model": model, "messages": messages, "max_tokens": params.max_new_tokens,
                        "temperature": params.temperature, "top_p": params.top_p}
                if avoid:  # vLLM's sampling extension; a server without it answers 400
                    body["bad_words"] = list(avoid)
                response = self._client.post(f"{url}/v1/chat/completions", json=body)
                if response.status_code in _RETRY_STATUS:
                    last_error = f"{url} answered HTTP {response.status_code}: {response.text[:200]}"
                    kind = "timeout" if response.status_code in (408, 504) else "unavailable"
                    continue
                if response.status_code >= 400:
                    failed = False  # the endpoint is alive; the request itself is wrong
                    return Completion(None, f"{url} answered HTTP {response.status_code}: "
                                      f"{response.text[:300]}", "bad_request", attempt,
                                      time.perf_counter() - started)
                text = response.json()["choices"][0]["message"]["content"] or ""
                failed = False
                return Completion(text, retries=attempt, latency_s=time.perf_counter() - started)
            except httpx.TimeoutException as err:
                last_error, kind = f"{url} timed out after {self.timeout_s}s ({type(err).__name__})", "timeout"
            except httpx.HTTPError as err:
                last_error, kind = f"{url} unreachable: {err!r}", "unavailable"
            except (KeyError, IndexError, ValueError) as err:
                last_error, kind = f"{url} sent a malformed completion: {err!r}", "unavailable"
            finally:
                self._release(url, failed)
        return Completion(None, f"gave up after {self.max_retries} retries: {last_error}", kind,
                          self.max_retries, time.perf_counter() - started)

    def chat(self, conversations: Sequence[list[Message]], params: GenerationParams,
             avoid: Sequence[Sequence[str]] | None = None) -> list[Completion]:
        """``avoid`` goes to the server as vLLM's ``bad_words`` sampling parameter; a server
        without it refuses the request (an error on the completion, not a silent unguarded one)."""
        if avoid is not None and len(avoid) != len(conversations):
            raise ValueError(f"{len(avoid)} avoid lists for {len(conversations)} conversations")
        words = avoid if avoid is not None else [()] * len(conversations)
        return list(self._pool.map(lambda c, a: self._one(c, params, a), conversations, words))

    def describe(self) -> dict:
        return {"backend": "openai", "urls": self.urls, "model": self.model}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
