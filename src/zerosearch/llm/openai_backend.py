"""A client for any number of OpenAI-compatible chat endpoints (vLLM, SGLang, transformers serve,
llama.cpp server), with load balancing and the shared retry helper (:mod:`zerosearch.retry`: the
request's deadline bounds every attempt, cancelled work stops, retries are counted).

One pooled ``httpx.Client`` serves every call (the public code opened a new client per call and
retried forever). Requests of a batch fan out over a thread pool; each goes to the endpoint with the
fewest requests in flight, skipping endpoints that failed recently. When the retries or the deadline
run out a request fails with a clear error instead of hanging training.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from zerosearch import retry
from zerosearch.llm.base import Completion, GenerationParams, Message


class OpenAIBackend:
    """Chat completions over HTTP against one or more endpoints."""

    def __init__(self, urls: Sequence[str], model: str | None = None, api_key: str | None = None,
                 policy: retry.RetryPolicy | None = None, max_concurrency: int = 64,
                 cooldown_s: float = 5.0):
        if not urls:
            raise ValueError("OpenAIBackend needs at least one endpoint URL")
        self.urls = [retry.server_root(u, "chat/completions") for u in urls]
        self.model = model
        self.policy = policy or retry.RetryPolicy()
        self.cooldown_s = cooldown_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, limits=httpx.Limits(max_connections=max_concurrency,
                                max_keepalive_connections=max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai")
        self._lock = threading.Lock()
        self._in_flight = {u: 0 for u in self.urls}
        self._down_until = {u: 0.0 for u in self.urls}
        self._rng = random.Random()

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

    def _model_name(self, timeout_s: float) -> str:
        if self.model is None:
            url = self._pick()
            try:
                response = self._client.get(f"{url}/v1/models", timeout=timeout_s)
                response.raise_for_status()
                self.model = response.json()["data"][0]["id"]
            finally:
                self._release(url, failed=False)
        return self.model

    def _attempt(self, messages: list[Message], params: GenerationParams, avoid: Sequence[str],
                 timeout_s: float) -> retry.Attempt:
        try:
            model = self._model_name(timeout_s)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
            return retry.Attempt(error=f"cannot list the served models ({err!r}); pass the model "
                                 "name with --backend-model")
        url = self._pick()
        body = {"model": model, "messages": messages, "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p}
        if avoid:  # vLLM's sampling extension; a server without it answers 400
            body["bad_words"] = list(avoid)
        send = retry.http_attempt(lambda t: self._client.post(
            f"{url}/v1/chat/completions", json=body,
            timeout=httpx.Timeout(t, connect=min(t, 5.0))), url)
        result = send(timeout_s)
        if result.error is None:
            try:
                result = retry.Attempt(value=result.value.json()["choices"][0]["message"]["content"]
                                       or "")
            except (KeyError, IndexError, TypeError, ValueError) as err:
                result = retry.Attempt(error=f"{url} sent a malformed completion: {err!r}")
        # a 4xx means the endpoint is alive and the request itself is wrong
        self._release(url, failed=result.error is not None and result.retry)
        return result

    def _one(self, messages: list[Message], params: GenerationParams,
             avoid: Sequence[str] = (), deadline: retry.Deadline | None = None) -> Completion:
        outcome = retry.call(lambda t: self._attempt(messages, params, avoid, t), self.policy,
                             deadline, self._rng)
        return Completion(outcome.value, outcome.error, outcome.kind, outcome.retries,
                          outcome.latency_s)

    def chat(self, conversations: Sequence[list[Message]], params: GenerationParams,
             avoid: Sequence[Sequence[str]] | None = None) -> list[Completion]:
        """``avoid`` goes to the server as vLLM's ``bad_words`` sampling parameter; a server
        without it refuses the request (an error on the completion, not a silent unguarded one)."""
        if avoid is not None and len(avoid) != len(conversations):
            raise ValueError(f"{len(avoid)} avoid lists for {len(conversations)} conversations")
        words = avoid if avoid is not None else [()] * len(conversations)
        deadline = retry.current()  # read here: the pool's threads do not share this context
        return list(self._pool.map(lambda c, a: self._one(c, params, a, deadline), conversations,
                                   words))

    def describe(self) -> dict:
        return {"backend": "openai", "urls": self.urls, "model": self.model}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
