"""Policy generation through an OpenAI-compatible completions endpoint (vLLM, SGLang…).

``zerosearch eval`` and ``ask`` can leave the policy on a server (a released 3B/7B checkpoint on
GPUs) and keep everything else here: the same :func:`zerosearch.rollout.run_rollouts`, the same
masks, the same answer extraction. Each context is sent as its token ids (``prompt`` is a list of
ints), so the server continues exactly the tokens the rollout assembled; the stop strings are the
protocol's (``</search>``, ``</answer>``) and are kept in the output. The continuation comes back as
token ids where the server returns them (vLLM's ``return_token_ids``); a server that only returns
text has it tokenised here, which may split a word differently from how it was generated, so
:meth:`EndpointGenerator.describe` reports which one happened. A generation that ended at the end-of-
sequence token gets that token appended when the server left it out, so the rollout ends the row
exactly as it does in process.

Contexts of a turn go out concurrently (the server batches them) to the endpoint with the fewest
requests in flight; a failed request is retried a bounded number of times, then the turn fails with
an error naming the endpoint (an evaluation cannot score a policy that did not answer).
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import httpx

from zerosearch import retry
from zerosearch.protocol import STOP_STRINGS
from zerosearch.rollout import Generation


@dataclass
class EndpointConfig:
    """Where the policy is served and how to call it."""

    urls: list[str] = field(default_factory=list)
    """OpenAI-compatible base URLs serving the policy (``http://host:port/v1``)."""
    model: str | None = None
    """Model name to request; None asks the first endpoint's ``/v1/models``."""
    api_key: str | None = None
    """Bearer key for the endpoints."""
    timeout_s: float = 600.0
    """Per-request timeout (one turn of one context)."""
    max_retries: int = 2
    """Retries of a failed request (connection error, 5xx) before the turn fails."""
    backoff_s: float = 1.0
    """First retry delay; doubled on each further retry (with jitter, as every client here)."""
    max_concurrency: int = 64
    """Most requests in flight at once (over all endpoints)."""
    seed: int | None = None
    """Sampling seed sent with each request (vLLM honours it), for sampled evaluation."""


class EndpointError(ValueError):
    """The policy endpoint could not produce a continuation (a ValueError, like
    :class:`zerosearch.engines.base.EngineError`, so the CLI reports it in one line)."""


class EndpointGenerator:
    """A :class:`zerosearch.rollout.PolicyGenerator` backed by ``POST /v1/completions``."""

    def __init__(self, cfg: EndpointConfig, tokenizer):
        if not cfg.urls:
            raise ValueError("the policy endpoint needs at least one URL (--policy-url)")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.urls = [retry.server_root(u, "completions") for u in cfg.urls]
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(
            cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)), limits=httpx.Limits(
            max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency))
        self._pool = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="policy")
        self._lock = threading.Lock()
        self._in_flight = {u: 0 for u in self.urls}
        self._policy = retry.RetryPolicy(
            timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.backoff_s * 2 ** max(cfg.max_retries - 1, 0),
            deadline_s=cfg.timeout_s * (cfg.max_retries + 1) + cfg.backoff_s * 2 ** (cfg.max_retries + 1))
        self.model = cfg.model or self._served_model()
        self.retokenised = 0
        """Continuations that came back as text only and were tokenised here."""
        self.eos_appended = 0
        """Continuations that ended at EOS without the server returning the EOS token."""

    def _served_model(self) -> str:
        url = self.urls[0]
        try:
            response = self._client.get(f"{url}/v1/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
            raise EndpointError(f"cannot list the models served at {url} ({err!r}); pass the name "
                                "with --policy-served-model") from err

    def _pick(self) -> str:
        with self._lock:
            url = min(self.urls, key=lambda u: (self._in_flight[u], random.random()))
            self._in_flight[url] += 1
            return url

    def _done(self, url: str) -> None:
        with self._lock:
            self._in_flight[url] -= 1

    def _post(self, body: dict) -> dict:
        """One completion through :func:`zerosearch.retry.call`: each attempt goes to the endpoint
        with the fewest requests in flight; transport errors, 408/429 and 5xx are retried with
        back-off, any other 4xx fails at once; all attempts share one deadline."""
        def attempt(timeout_s: float) -> retry.Attempt:
            url = self._pick()
            try:
                return retry.http_attempt(lambda t: self._client.post(
                    f"{url}/v1/completions", json=body, timeout=httpx.Timeout(t, connect=min(t, 10.0))),
                    url)(timeout_s)
            finally:
                self._done(url)

        outcome = retry.call(attempt, self._policy)
        if not outcome.ok:
            raise EndpointError(f"policy generation failed: {outcome.error}")
        try:
            return outcome.value.json()
        except ValueError as err:
            raise EndpointError(f"the policy endpoint answered something that is not JSON: "
                                f"{outcome.value.text[:200]}") from err

    def _one(self, context: list[int], max_new_tokens: int, temperature: float,
             top_p: float) -> Generation:
        body = {"model": self.model, "prompt": list(context), "max_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "stop": list(STOP_STRINGS),
                "include_stop_str_in_output": True, "skip_special_tokens": False,
                "return_token_ids": True}
        if self.cfg.seed is not None:
            body["seed"] = self.cfg.seed
        data = self._post(body)
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as err:
            raise EndpointError(f"malformed completion from the policy endpoint: {str(data)[:200]}") from err
        ids = choice.get("token_ids")
        if ids is None:
            ids = self.tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"]
            with self._lock:
                self.retokenised += 1
        ids = list(ids)
        eos = self.tokenizer.eos_token_id
        # vLLM reports an EOS stop as finish_reason "stop" with no stop_reason (a stop string
        # names itself there); keep the EOS token so the rollout sees the message end
        if (choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
                and eos is not None and (not ids or ids[-1] != eos)):
            ids.append(eos)
            with self._lock:
                self.eos_appended += 1
        return Generation(ids)

    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float) -> list[Generation]:
        return list(self._pool.map(lambda c: self._one(c, max_new_tokens, temperature, top_p),
                                   contexts))

    def describe(self) -> dict:
        return {"backend": "openai-completions", "urls": self.urls, "model": self.model,
                "retokenised": self.retokenised, "eos_appended": self.eos_appended}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def load_policy_endpoint(model: str, cfg: EndpointConfig):
    """(EndpointGenerator, tokenizer): the policy served at ``cfg.urls``, tokenised locally with
    ``model``'s tokenizer (the served checkpoint's; only the tokenizer is loaded here)."""
    from transformers import AutoTokenizer

    from zerosearch.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return EndpointGenerator(cfg, tokenizer), tokenizer


def load_policy_anywhere(model: str, device: str = "auto", urls: Sequence[str] = (),
                         served_model: str | None = None):
    """(generator, tokenizer): the policy behind ``urls`` when any are given (``zerosearch eval /
    ask --policy-url``), else loaded in process (:func:`zerosearch.generation.hf.load_policy`)."""
    if urls:
        return load_policy_endpoint(model, EndpointConfig(urls=list(urls), model=served_model))
    from zerosearch.generation.hf import load_policy

    return load_policy(model, device)
