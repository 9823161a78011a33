"""The search service's edge: everything between the socket and the route handlers.

What it guards against (each was a failure of a plain FastAPI + uvicorn setup):

- bodies over the size limit, whatever the framing: the limit is enforced *while reading*, so a
  chunked upload without Content-Length is cut off at the limit, not buffered whole;
- slow or half-open clients: header and body read time are bounded (:func:`guarded_h11`, and the
  body deadline in :class:`Edge`), connections are capped, and each kind of event is logged once
  and counted, not one traceback per connection;
- bodies that are cheap to send and expensive to validate (millions of numbers, deep nesting,
  5,000-digit numbers, lone surrogates): parsed once off the event loop and checked for shape
  before any handler sees them, each with an error that names the problem;
- unbounded metric labels: requests are labelled by route template, unknown paths as ``other``;
- an unexpected exception: a JSON 500, counted like every other status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

log = logging.getLogger("zerosearch.server")


class SafeJSONResponse(JSONResponse):
    """JSON whose text can always be sent: a string that is not valid Unicode (a lone surrogate
    echoed from a request) is written as a ``\\ud800`` escape instead of failing to encode."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, close: bool = False) -> SafeJSONResponse:
    """``{"error": message}`` with ``status`` (and ``Connection: close`` when the request body was
    not read to its end, so the connection cannot be reused half-way through a body)."""
    headers = {"connection": "close"} if close else None
    return SafeJSONResponse({"error": message}, status_code=status, headers=headers)


class OnceLog:
    """Logs the first event of each kind (with how to see the count) and counts the rest."""

    def __init__(self, count: Callable[[str], None] | None = None):
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._count = count

    def __call__(self, kind: str, message: str, exc_info: bool = False) -> None:
        if self._count:
            self._count(kind)
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        log.warning("%s (logged once; zerosearch_edge_events_total{kind=%r} counts them)", message,
                    kind, exc_info=exc_info)


# -- body shape -----------------------------------------------------------------------------------

@dataclass
class BodyLimits:
    """Cheap checks on a JSON body before any schema sees it."""

    max_depth: int = 16
    """Deepest nesting of arrays and objects (the API needs 4)."""
    max_items: int = 10_000
    """Most elements in any one array or object."""
    max_values: int = 200_000
    """Most JSON values in the whole body."""


class BodyError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return err.start


def check_json(body: bytes, limits: BodyLimits) -> None:
    """Raise :class:`BodyError` naming the first problem with ``body`` (not JSON, too deep, too
    many values, text that is not valid Unicode); run it off the event loop."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BodyError(400, f"the body is not UTF-8 (byte {err.start}: {body[err.start:err.start + 1]!r})")
    try:
        value = json.loads(text)
    except RecursionError:
        raise BodyError(400, f"the body is nested too deeply (the limit is {limits.max_depth} levels)")
    except json.JSONDecodeError as err:
        raise BodyError(422, f"the body is not valid JSON: {err.msg} at line {err.lineno} column "
                        f"{err.colno}")
    except ValueError as err:  # int('9' * 5000): CPython's digit limit for integer conversion
        raise BodyError(400, f"the body holds a number that cannot be read ({err}); send numbers "
                        "with fewer than 4300 digits") from None
    stack: list[tuple[Any, str, int]] = [(value, "body", 1)]
    seen = 0
    while stack:
        node, where, depth = stack.pop()
        seen += 1
        if seen > limits.max_values:
            raise BodyError(413, f"the body holds more than {limits.max_values} JSON values")
        if isinstance(node, str):
            at = _surrogate_at(node)
            if at is not None:
                raise BodyError(422, f"{where}: the text holds a lone surrogate "
                                f"({node[at]!a}) at character {at}; send valid Unicode")
            continue
        if not isinstance(node, (list, dict)):
            continue
        if depth > limits.max_depth:
            raise BodyError(400, f"{where}: nested deeper than {limits.max_depth} levels")
        if len(node) > limits.max_items:
            raise BodyError(413, f"{where}: {len(node)} elements; the limit is {limits.max_items}")
        if isinstance(node, dict):
            for key, item in node.items():
                at = _surrogate_at(key)
                if at is not None:
                    raise BodyError(422, f"{where}: a key holds a lone surrogate; send valid Unicode")
                stack.append((item, f"{where}.{key}" if where != "body" else key, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node))


# -- the ASGI middleware --------------------------------------------------------------------------

@dataclass
class EdgeConfig:
    """The edge's limits (filled from :class:`zerosearch.server.ServerConfig`)."""

    routes: frozenset[str]
    """Paths served; anything else is counted under the label ``other``."""
    max_body_bytes: int
    body_timeout_s: float
    token: str | None
    open_paths: frozenset[str] = frozenset({"/health"})
    """Paths answered without the token (with less detail)."""
    limits: BodyLimits = field(default_factory=BodyLimits)


class Edge:
    """Pure ASGI middleware: auth, body size and read time, JSON shape, metrics, JSON 500s."""

    def __init__(self, app, config: EdgeConfig, observe: Callable[[str, int, float], None],
                 events: OnceLog):
        self.app, self.cfg, self.observe, self.events = app, config, observe, events

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in self.cfg.routes else "other"
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            response = await self._screen(scope, receive, route)
            if isinstance(response, JSONResponse):
                await response(scope, receive, counted_send)
            else:
                await self.app(scope, response, counted_send)
        except Exception as err:  # noqa: BLE001 - the last line of defence: a JSON 500, counted
            self.events(f"exception:{type(err).__name__}",
                        f"{scope['method']} {route} raised {type(err).__name__}: {err}", exc_info=True)
            if status["code"] == 500:  # nothing sent yet (or a 500 already started)
                try:
                    await error_response(500, f"internal error ({type(err).__name__}); the "
                                         "server log has the details")(scope, receive, counted_send)
                except Exception:  # noqa: BLE001 - the client is gone
                    pass
        finally:
            self.observe(route, status["code"], time.perf_counter() - started)

    async def _screen(self, scope, receive, route: str):
        """A response that refuses the request, or the ``receive`` the application should use."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scope.setdefault("state", {})["authenticated"] = True
        if self.cfg.token:
            import secrets

            given = headers.get("authorization", "")
            ok = secrets.compare_digest(given.encode(), f"Bearer {self.cfg.token}".encode())
            scope["state"]["authenticated"] = ok
            if not ok and scope["path"] not in self.cfg.open_paths:
                return error_response(401, "missing or wrong bearer token")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        length = headers.get("content-length")
        limit = self.cfg.max_body_bytes
        if length is not None:
            if not length.isdigit():
                return error_response(400, f"Content-Length {length!r} is not a number", close=True)
            if int(length) > limit:
                return error_response(413, f"request body of {length} bytes exceeds {limit}",
                                      close=True)
        chunks, size = [], 0
        deadline = time.monotonic() + self.cfg.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                self.events("body_timeout", f"a request body took longer than "
                            f"{self.cfg.body_timeout_s}s to arrive; answered 408")
                return error_response(408, f"the request body did not arrive within "
                                      f"{self.cfg.body_timeout_s}s", close=True)
            if message["type"] == "http.disconnect":
                return error_response(400, "the client disconnected before the body ended", close=True)
            size += len(message.get("body", b""))
            if size > limit:
                return error_response(413, f"request body exceeds {limit} bytes", close=True)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if route != "other" and body:
            try:
                await run_in_threadpool(check_json, body, self.cfg.limits)
            except BodyError as err:
                return error_response(err.status, str(err))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


# -- uvicorn: header read timeout and a connection cap --------------------------------------------

def guarded_h11(header_timeout_s: float, max_connections: int, events: OnceLog):
    """uvicorn's h11 protocol with two additions: a connection whose request headers are not
    complete ``header_timeout_s`` after it opened (or after its last response) is closed; and at
    ``max_connections`` open connections a new one evicts the oldest connection that is waiting
    for headers (a slow client, or an idle keep-alive one), or is closed itself when none is, so a
    flood of half-open connections cannot lock out clients that send whole requests."""
    from collections import OrderedDict

    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: "OrderedDict[GuardedH11, None]" = OrderedDict()  # oldest first

    class GuardedH11(H11Protocol):
        quiet = False

        def connection_made(self, transport):
            if not GuardedH11.quiet:  # the first connection: the server's loop is running
                GuardedH11.quiet = True
                quiet_loop_errors(events)
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > max_connections:
                if not waiting:
                    events("connection_cap", f"{max_connections} connections are busy; a new one "
                           "was closed at once")
                    transport.abort()
                    return
                oldest, _ = waiting.popitem(last=False)
                events("connection_evicted", f"at {max_connections} open connections, the oldest one "
                       "still waiting for request headers was closed to make room")
                oldest.transport.abort()
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_overdue)
            waiting[self] = None

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def handle_events(self) -> None:
            super().handle_events()
            if self._busy():
                waiting.pop(self, None)

        def _headers_overdue(self) -> None:
            if not self._busy() and not self.transport.is_closing():
                events("header_timeout", f"a client sent no complete request headers within "
                       f"{header_timeout_s}s; its connection was closed")
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            waiting.pop(self, None)
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11


def quiet_loop_errors(events: OnceLog) -> None:
    """Route the running loop's unhandled errors (``accept()`` out of file descriptors, a socket
    reset mid-write) through ``events``: one log line per kind, not one traceback each."""
    loop = asyncio.get_running_loop()

    def handler(_, context: dict) -> None:
        err = context.get("exception")
        kind = type(err).__name__ if err else "loop"
        events(f"loop:{kind}", f"event loop: {context.get('message', '')} {err!r}")

    loop.set_exception_handler(handler)
