"""One retry helper for every HTTP client (remote engine, web engine, OpenAI-compatible back end).

Why one: three hand-written loops each retried on their own clock, so a call the search service
had already answered with 504 kept hammering a stalled back end for minutes, and after the back end
came back the pile of stale retries kept it saturated (a retry storm). Here

- a request has a :class:`Deadline` that bounds *all* of its attempts and back-off sleeps, not
  only one attempt (each attempt's timeout is cut to what is left);
- cancelled work stops: the search service cancels the deadline of a call it answered with 504,
  and nothing after that point starts another attempt or keeps sleeping;
- every retry is counted (:func:`retries_spent`, exported by the service as
  ``zerosearch_backend_retries_total``).

The deadline travels with the calling context (:func:`deadline_scope` sets it, :func:`current`
reads it); clients that fan out over their own thread pools read it in the calling thread and pass
it on explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """How one request is retried. The defaults bound a hung back end to ``deadline_s`` seconds."""

    timeout_s: float = 15.0
    """Longest single attempt (connect + read), cut to what is left of the deadline."""
    max_retries: int = 2
    """Retries after the first attempt (so at most ``max_retries + 1`` attempts)."""
    backoff_s: float = 0.25
    """First back-off sleep; doubles per retry, with jitter (x0.5-1.5)."""
    max_backoff_s: float = 2.0
    """Longest back-off sleep."""
    deadline_s: float = 30.0
    """Bound on all attempts and sleeps of one request together, when the caller set none."""


class Deadline:
    """A point in (monotonic) time past which no attempt starts, and a cancel switch. A deadline
    with a ``parent`` ends no later than the parent and is cancelled with it."""

    def __init__(self, seconds: float, parent: "Deadline | None" = None):
        self.at = time.monotonic() + seconds
        if parent is not None:
            self.at = min(self.at, parent.at)
        self.seconds = max(self.at - time.monotonic(), 0.0)
        self.parent = parent
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.parent is not None and self.parent.cancelled)

    def remaining(self) -> float:
        return 0.0 if self.cancelled else max(self.at - time.monotonic(), 0.0)

    def cancel(self) -> None:
        """Stop every attempt and sleep bound to this deadline (the caller gave up)."""
        self._cancelled.set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less if the deadline comes first or it is cancelled, checked
        every 50 ms); False if it is cancelled or expired by then."""
        end = time.monotonic() + min(seconds, self.remaining())
        while (left := end - time.monotonic()) > 0 and not self.cancelled:
            self._cancelled.wait(min(left, 0.05))
        return self.remaining() > 0


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("zerosearch_deadline",
                                                                          default=None)


def current() -> Deadline | None:
    """The deadline of the request being served in this context (None outside the service)."""
    return _current.get()


@contextlib.contextmanager
def deadline_scope(deadline: Deadline) -> Iterator[Deadline]:
    """Make ``deadline`` the :func:`current` one inside the block (and in threads started with a
    copy of this context, e.g. starlette's ``run_in_threadpool``)."""
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


_lock = threading.Lock()
_retries = 0


def retries_spent() -> int:
    """Retries spent by every client in this process since it started."""
    return _retries


def _count_retry() -> None:
    global _retries
    with _lock:
        _retries += 1


@dataclass
class Attempt(Generic[T]):
    """What one attempt produced: a value, or an error that is worth retrying (or not)."""

    value: T | None = None
    error: str | None = None
    kind: str = "unavailable"
    """``unavailable``, ``timeout`` or ``bad_request`` (see :data:`ErrorKind`)."""
    retry: bool = True
    """False for an answer that another attempt would not change (a 4xx)."""


@dataclass
class Outcome(Generic[T]):
    """The result of :func:`call`: a value, or the last error; and the retries spent."""

    value: T | None
    error: str | None
    kind: str | None
    retries: int
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


def call(attempt: Callable[[float], Attempt[T]], policy: RetryPolicy,
         deadline: Deadline | None = None, rng: random.Random | None = None) -> Outcome[T]:
    """Run ``attempt(timeout_s)`` until it succeeds, fails for good, or the retries or the deadline
    run out. ``deadline`` defaults to :func:`current`, bounded by ``policy.deadline_s``."""
    started = time.perf_counter()
    deadline = Deadline(policy.deadline_s, deadline if deadline is not None else current())
    rng = rng or random
    error, kind, retries = "no attempt made", "timeout", 0
    for number in range(policy.max_retries + 1):
        if number:
            pause = min(policy.backoff_s * 2 ** (number - 1), policy.max_backoff_s)
            if not deadline.sleep(pause * (0.5 + rng.random())):
                break
            retries += 1
            _count_retry()
        budget = min(policy.timeout_s, deadline.remaining())
        if budget <= 0:
            break
        result = attempt(budget)
        if result.error is None:
            return Outcome(result.value, None, None, retries, time.perf_counter() - started)
        error, kind = result.error, result.kind
        if not result.retry:
            return Outcome(None, error, kind, retries, time.perf_counter() - started)
    else:
        return Outcome(None, f"gave up after {retries} retries: {error}", kind, retries,
                       time.perf_counter() - started)
    why = "the call was cancelled" if deadline.cancelled else (
        f"the deadline of {deadline.seconds:.3g}s passed")
    if error == "no attempt made":
        return Outcome(None, f"{why} before an attempt could start", "timeout", retries,
                       time.perf_counter() - started)
    return Outcome(None, f"{why} after {retries} retries: {error}", kind, retries,
                   time.perf_counter() - started)


def server_root(url: str, endpoint: str) -> str:
    """An OpenAI-compatible server's root URL from what a user may pass: the root itself, ``…/v1``
    or the full ``…/v1/<endpoint>`` (``completions``, ``chat/completions``)."""
    url = url.rstrip("/")
    for suffix in (f"/{endpoint}", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url.rstrip("/")


def http_attempt(send: Callable[[float], "object"], where: str,
                 retry_status: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
                 ) -> Callable[[float], Attempt]:
    """Wrap ``send(timeout_s) -> httpx.Response`` as an attempt: transport errors and
    ``retry_status`` answers are retried; any other 4xx/5xx is final; the value is the response."""
    import httpx

    def run(timeout_s: float) -> Attempt:
        try:
            response = send(timeout_s)
        except httpx.TimeoutException as err:
            return Attempt(error=f"{where} timed out after {timeout_s:.3g}s ({type(err).__name__})",
                           kind="timeout")
        except httpx.HTTPError as err:
            return Attempt(error=f"{where} unreachable: {err!r}", kind="unavailable")
        if response.status_code in retry_status:
            kind = "timeout" if response.status_code in (408, 504) else "unavailable"
            return Attempt(error=f"{where} answered HTTP {response.status_code}: "
                           f"{response.text[:200]}", kind=kind)
        if response.status_code >= 400:
            return Attempt(error=f"{where} rejected the request (HTTP {response.status_code}): "
                           f"{response.text[:300]}", kind="bad_request", retry=False)
        return Attempt(value=response)

    return run
