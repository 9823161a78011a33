"""The fault benchmark (issue 23): the search service and the long jobs under hostile input, load,
stalled and killed back ends, slow clients and SIGKILL, measured on real processes at loopback.

Sections (each writes its part of ``docs/results/faults.json``):

- ``hostile``: a table of bad requests against ``zerosearch serve --engine bm25`` (with a token):
  status, seconds, whether the answer is JSON with a message; and /health's worst latency while the
  heaviest ones are parsed;
- ``load``: BM25 searches at concurrency 1, 16 and 64 for a fixed time each: calls/s, p50/p99, 5xx;
- ``stall`` and ``kill``: the simulated engine behind a local OpenAI-compatible back end (a small
  fake with a vLLM-like capacity of 4 requests at once, 0.25 s each, that drops a request whose
  client hung up) that first answers, then stalls 20 s (or dies: its port refuses connections),
  then comes back, under 8 clients calling all the time: statuses, calls that took longer than the
  configured timeout ("hangs"), back-end requests sent during the fault and waiting when it ends
  (stale retries show here), back-end requests per client call after the return, /health, and
  the recovery time (back end back -> every later call succeeds);
- ``slowloris``: 1,500 connections that never finish their headers, with /search and /health
  measured meanwhile, how many the server closed after the header timeout, and its log lines;
- ``resume``: ``eval``, ``train`` and ``sim collect`` are SIGKILLed mid-run and rerun; the output is
  compared with an uninterrupted run (nothing lost, nothing duplicated).

Run from the repository root (about 12 minutes on 2 busy cores):
``PYTHONPATH=src .venv/bin/python benchmarks/faults.py`` (``--only hostile,load`` for some
sections). ``--src OLD/src --label before`` runs the same sections against another source tree
(e.g. ``git archive <commit> src | tar -x -C OLD``) for a before/after. Uses the shared corpus and
NQ set when ``../shared/data`` exists, else the mini-world.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.exists():
    SHARED = Path("/work/shared/data")
OUT = ROOT / "docs" / "results" / "faults.json"
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PY = [sys.executable, "-m", "zerosearch.cli"]
BASELINE = False  # set by --src: the other tree's serve has no --header-timeout / --max-connections
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
       "TRL_EXPERIMENTAL_SILENCE": "1"}


# -- processes --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``."""
    if proc.poll() is None:
        with _quiet():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with _quiet():
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError))


class Serve:
    """``zerosearch serve`` in its own process group, its output in a log file."""

    def __init__(self, work: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"serve-{self.port}.log"
        self.proc = subprocess.Popen([*PY, "serve", "--port", str(self.port), *flags], env=ENV,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            with _quiet_http():
                if httpx.get(self.url + "/health", timeout=2).status_code in (200, 503):
                    return
            time.sleep(0.3)
        stop(self.proc)
        raise RuntimeError("serve did not come up")

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", headers=AUTH, timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def close(self) -> None:
        stop(self.proc)


class _quiet_http:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, httpx.HTTPError)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(int(q * len(values)), len(values) - 1)], 4)


# -- data ---------------------------------------------------------------------------------------------

def corpus_and_questions(work: Path) -> tuple[Path, Path]:
    corpus, nq = SHARED / "corpus" / "wiki_passages.jsonl", SHARED / "qa" / "nq" / "test.jsonl"
    if corpus.exists() and nq.exists():
        return corpus, nq
    subprocess.run([*PY, "data", "miniworld", "-o", str(work / "world")], env=ENV, check=True,
                   capture_output=True)
    return work / "world" / "corpus.jsonl", work / "world" / "test.jsonl"


# -- hostile input --------------------------------------------------------------------------------------

def hostile_cases() -> list[tuple[str, str, str, bytes | None, dict]]:
    """(name, method, path, body, extra headers)."""
    j = {"content-type": "application/json"}
    q = lambda s: json.dumps({"requests": [{"query": s}]}).encode()  # noqa: E731
    cases = [
        ("truncated JSON", "POST", "/search", b'{"requests": [', j),
        ("not an object", "POST", "/search", b"[1, 2, 3]", j),
        ("null body", "POST", "/search", b"null", j),
        ("empty body", "POST", "/search", b"", j),
        ("empty query", "POST", "/search", q(""), j),
        ("whitespace query", "POST", "/search", q("   "), j),
        ("3,000-character query", "POST", "/search", q("x" * 3000), j),
        ("query is a number", "POST", "/search", b'{"requests": [{"query": 5}]}', j),
        ("topk is a string", "POST", "/search", b'{"requests": [{"query": "q", "topk": "5"}]}', j),
        ("topk 500", "POST", "/search", b'{"requests": [{"query": "q", "topk": 500}]}', j),
        ("topk -1", "POST", "/search", b'{"requests": [{"query": "q", "topk": -1}]}', j),
        ("unknown mode", "POST", "/search", b'{"requests": [{"query": "q", "mode": "x"}]}', j),
        ("noise_prob 2", "POST", "/search", b'{"requests": [{"query": "q", "noise_prob": 2}]}', j),
        ("NaN noise_prob", "POST", "/search", b'{"requests": [{"query": "q", "noise_prob": NaN}]}', j),
        ("batch of 300 (limit 256)", "POST", "/search",
         json.dumps({"requests": [{"query": "q"}] * 300}).encode(), j),
        ("non-UTF-8 bytes", "POST", "/search", b'{"requests": [{"query": "\xff\xfe"}]}', j),
        ("lone surrogate in query", "POST", "/search", q("a \ud800 b"), j),
        ("lone surrogate in question", "POST", "/search",
         json.dumps({"requests": [{"query": "q", "question": "\udfff"}]}).encode(), j),
        ("lone surrogate in /retrieve", "POST", "/retrieve", json.dumps({"queries": ["\ud800"]}).encode(), j),
        ("5,000-digit number", "POST", "/search",
         b'{"requests": [{"query": "q", "topk": ' + b"9" * 5000 + b"}]}", j),
        ("nesting 100,000 deep", "POST", "/search", b"[" * 100_000 + b"]" * 100_000, j),
        ("1.3 M integers (3.9 MB)", "POST", "/retrieve",
         json.dumps({"queries": [1] * 1_300_000}).encode(), j),
        ("200,000 short strings", "POST", "/retrieve",
         json.dumps({"queries": ["q"] * 200_000}).encode(), j),
        ("5 MB body (Content-Length)", "POST", "/search", b" " * (5 << 20), j),
        ("wrong token", "POST", "/search", q("q"), {**j, "authorization": "Bearer nope"}),
        ("no token", "POST", "/search", q("q"), {**j, "authorization": ""}),
        ("unknown path", "GET", "/admin", None, {}),
        ("GET /search", "GET", "/search", None, {}),
        ("100 KB header", "GET", "/health", None, {"x-pad": "a" * 100_000}),
        ("bad Content-Length", "POST", "/search", q("q"), {**j, "content-length": "12x"}),
    ]
    return cases


def raw_request(port: int, method: str, path: str, body: bytes | None, headers: dict,
                timeout: float = 60) -> tuple[int | None, bytes, float]:
    """Send one request on a raw socket (so malformed headers go out as written)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    merged = {"authorization": f"Bearer {TOKEN}", **headers}
    if body is not None and "content-length" not in merged:
        merged["content-length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in merged.items() if v != ""]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    took = time.monotonic() - started
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = None
    return status, answer.partition(b"\r\n\r\n")[2], took


def chunked_upload(port: int, total: int) -> tuple[int | None, int, float]:
    """A chunked body of up to ``total`` bytes: (status, bytes sent before the answer, seconds)."""
    import select

    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk, sent, answer = b"a" * 65536, 0, b""
    try:
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                break
        answer = sock.recv(4096)
    except OSError:
        with _quiet_os():
            answer = sock.recv(4096)
    sock.close()
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = None
    return status, sent, time.monotonic() - started


class _quiet_os:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def health_watch(url: str):
    """Start polling /health; the returned function stops it and gives the worst latency."""
    worst, done = [0.0], threading.Event()

    def poll():
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                started = time.monotonic()
                with _quiet_http():
                    client.get(url + "/health")
                worst[0] = max(worst[0], time.monotonic() - started)
                time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def finish() -> float:
        done.set()
        thread.join()
        return round(worst[0], 3)

    return finish


def run_hostile(work: Path, corpus: Path) -> dict:
    server = Serve(work, "--engine", "bm25", "--corpus", str(corpus), "--token", TOKEN)
    rows = []
    try:
        finish = health_watch(server.url)
        for name, method, path, body, headers in hostile_cases():
            status, payload, took = raw_request(server.port, method, path, body, headers)
            try:
                message = json.loads(payload).get("error") if payload else None
            except (ValueError, AttributeError):
                message = None
            rows.append({"case": name, "status": status, "seconds": round(took, 3),
                         "json_error": message is not None, "message": (message or "")[:160]})
        status, sent, took = chunked_upload(server.port, 200 << 20)
        rows.append({"case": "200 MB chunked body", "status": status, "seconds": round(took, 3),
                     "json_error": None, "message": f"{sent} bytes sent before the answer"})
        worst_health = finish()
        ok = httpx.post(server.url + "/search", headers=AUTH, timeout=30,
                        json={"requests": [{"query": "capital of France"}]}).status_code
        log_lines = len(server.log.read_text().splitlines())
    finally:
        server.close()
    return {"rows": rows, "5xx": sum(1 for r in rows if r["status"] and r["status"] >= 500),
            "4xx": sum(1 for r in rows if r["status"] and 400 <= r["status"] < 500),
            "no_answer": sum(1 for r in rows if r["status"] is None),
            "health_worst_s_during_table": worst_health, "search_after_table": ok,
            "server_log_lines": log_lines}


# -- load ----------------------------------------------------------------------------------------------

def run_load(work: Path, corpus: Path, questions: Path, seconds: float = 12.0) -> dict:
    queries = [json.loads(line)["question"] for line in open(questions)][:500]
    server = Serve(work, "--engine", "bm25", "--corpus", str(corpus))
    levels = {}
    try:
        for concurrency in (1, 16, 64):
            latencies, statuses, lock = [], {}, threading.Lock()
            stop_at = time.monotonic() + seconds

            def client(offset: int):
                with httpx.Client(timeout=120) as http:
                    i = offset
                    while time.monotonic() < stop_at:
                        started = time.monotonic()
                        try:
                            code = http.post(server.url + "/search", json={"requests": [
                                {"query": queries[i % len(queries)], "topk": 5}]}).status_code
                        except httpx.HTTPError as err:
                            code = type(err).__name__
                        with lock:
                            latencies.append(time.monotonic() - started)
                            statuses[str(code)] = statuses.get(str(code), 0) + 1
                        i += concurrency

            started = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(client, range(concurrency)))
            took = time.monotonic() - started
            levels[str(concurrency)] = {
                "calls": len(latencies), "calls_per_s": round(len(latencies) / took, 1),
                "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
                "statuses": statuses,
                "5xx": sum(n for c, n in statuses.items() if c.isdigit() and int(c) >= 500)}
    finally:
        server.close()
    return levels


# -- stalled and killed back ends ------------------------------------------------------------------

def _hung_up(sock: socket.socket) -> bool:
    import select

    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class FakeBackend:
    """An OpenAI-compatible chat endpoint: ``ok``, ``stall`` (holds requests until ``restore``),
    or stopped (``kill``: the port refuses connections) and started again on the same port."""

    def __init__(self, port: int | None = None, capacity: int = 4, service_s: float = 0.25):
        self.mode, self.requests, self.port = "ok", [], port or free_port()
        self.release = threading.Event()
        self.waiting, self._lock = 0, threading.Lock()
        self.slots = threading.Semaphore(capacity)  # a back end serves so many requests at once
        self.service_s = service_s
        self._start()

    def _start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests.append(time.monotonic())
                if fake.mode == "stall":
                    with fake._lock:
                        fake.waiting += 1
                    try:  # like vLLM: a request whose client hung up is dropped, not answered
                        while not fake.release.wait(0.1):
                            if _hung_up(self.connection):
                                return
                    finally:
                        with fake._lock:
                            fake.waiting -= 1
                with fake.slots:
                    time.sleep(fake.service_s)
                body = json.dumps({"choices": [{"message": {"content":
                                                            "Doc 1: one.\nDoc 2: two."}}]}).encode()
                with _quiet_os():
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            request_queue_size = 256  # the default 5 drops connections under 8 clients

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self):
        self.release.clear()
        self.mode = "stall"

    def restore(self) -> int:
        """Answer again; returns how many stalled requests were waiting (they all land at once)."""
        with self._lock:
            piled = self.waiting
        self.mode = "ok"
        self.release.set()
        return piled

    def kill(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def revive(self):
        self.mode = "ok"
        self._start()

    def close(self):
        self.release.set()
        with _quiet_os():
            self.kill()


def run_backend_fault(work: Path, fault: str, request_timeout: float = 5.0, attempt_timeout: float = 4.0,
                      before: float = 5.0, during: float = 20.0, after: float = 15.0,
                      clients: int = 8) -> dict:
    backend = FakeBackend()
    server = Serve(work, "--engine", "simulated", "--backend-url", backend.url, "--backend-model", "m",
                   "--max-new-tokens", "16", "--request-timeout", str(request_timeout),
                   "--timeout", str(attempt_timeout), "--max-retries", "3")
    calls, lock = [], threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + before + during + after
    body = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"], "topk": 2}]}

    def client(_):
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    code = http.post(server.url + "/search", json=body).status_code
                except httpx.HTTPError as err:
                    code = type(err).__name__
                with lock:
                    calls.append((started - t0, time.monotonic() - t0, code))
                time.sleep(0.05)

    health = []

    def watch_health():
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop_at:
                started = time.monotonic() - t0
                with _quiet_http():
                    code = http.get(server.url + "/health").status_code
                    health.append((started, time.monotonic() - t0, code))
                time.sleep(0.5)

    try:
        pool = ThreadPoolExecutor(clients + 1)
        futures = [pool.submit(client, i) for i in range(clients)] + [pool.submit(watch_health)]
        time.sleep(before)
        fault_at = time.monotonic() - t0
        backend.stall() if fault == "stall" else backend.kill()
        time.sleep(during)
        back_at = time.monotonic() - t0
        piled = backend.restore() if fault == "stall" else backend.revive()
        for f in futures:
            f.result()
        pool.shutdown()
        retries = server.metric("zerosearch_backend_retries_total")
    finally:
        server.close()
        backend.close()
    during_calls = [c for c in calls if fault_at <= c[0] < back_at]
    after_calls = [c for c in calls if c[0] >= back_at]
    first_ok_after = min((c[1] for c in calls if c[1] >= back_at and c[2] == 200), default=None)
    # the recovery: from the back end's return until every call that *starts* later succeeds
    failing_after = [c for c in after_calls if c[2] != 200]
    settled = max((c[0] for c in failing_after), default=back_at)
    after_requests = [t - t0 for t in backend.requests if t - t0 >= back_at + 0.5]
    window = max(stop_at - t0 - (back_at + 0.5), 1e-9)
    after_calls_late = [c for c in after_calls if c[0] >= back_at + 0.5]
    hangs = [c for c in calls if c[1] - c[0] > request_timeout + 1.0]
    count = lambda rows: {str(k): sum(1 for c in rows if c[2] == k) for k in {c[2] for c in rows}}  # noqa: E731
    # /health answers that ended during the fault, once three calls had time to fail
    health_during = [s for t, end, s in health if fault_at + request_timeout * 3 < end < back_at]
    health_after = [(t, s) for t, _, s in health if t >= back_at]
    return {
        "fault": fault, "request_timeout_s": request_timeout, "attempt_timeout_s": attempt_timeout,
        "backend_capacity": "4 requests at once, 0.25 s each (16/s)",
        "stalled_requests_waiting_at_return": piled,
        "backend_requests_during_fault": sum(1 for t in backend.requests if fault_at <= t - t0 < back_at),
        "fault_seconds": during, "clients": clients,
        "statuses_before": count([c for c in calls if c[0] < fault_at]),
        "statuses_during": count(during_calls), "statuses_after": count(after_calls),
        "slowest_call_during_s": round(max((c[1] - c[0] for c in during_calls), default=0), 3),
        "hangs_past_timeout": len(hangs),
        "5xx_other_than_503_504": sum(1 for c in calls if isinstance(c[2], int) and c[2] >= 500
                                      and c[2] not in (503, 504)),
        "first_success_after_return_s": round(first_ok_after - back_at, 3) if first_ok_after else None,
        "recovery_s": round(settled - back_at, 3),
        "backend_requests_per_call_after_return": round(len(after_requests) / max(len(after_calls_late), 1), 3),
        "backend_requests_per_s_after_return": round(len(after_requests) / window, 2),
        "retries_total": retries,
        "health_during_fault": sorted(set(health_during)),
        "health_samples_start_end_status": [(round(t, 1), round(e, 1), s) for t, e, s in health],
        "fault_at_s": round(fault_at, 1), "back_at_s": round(back_at, 1),
        "health_first_200_after_return_s": next((round(t - back_at, 3) for t, s in health_after
                                                 if s == 200), None),
    }


# -- slowloris -----------------------------------------------------------------------------------------

def run_slowloris(work: Path, corpus: Path, connections: int = 1500, header_timeout: float = 5.0) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, connections + 512)), hard))
    guards = [] if BASELINE else ["--header-timeout", str(header_timeout), "--max-connections", "512"]
    server = Serve(work, "--engine", "bm25", "--corpus", str(corpus), *guards)
    socks = []
    try:
        opened_at = time.monotonic()
        for _ in range(connections):
            try:
                s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
                s.setblocking(False)
                socks.append(s)
            except OSError:
                break
        opened = time.monotonic() - opened_at
        latencies, statuses = [], {}
        for _ in range(20):
            started = time.monotonic()
            try:
                code = httpx.post(server.url + "/search", timeout=30,
                                  json={"requests": [{"query": "capital of France"}]}).status_code
            except httpx.HTTPError as err:
                code = type(err).__name__
            latencies.append(time.monotonic() - started)
            statuses[str(code)] = statuses.get(str(code), 0) + 1
            time.sleep(0.1)
        time.sleep(max(header_timeout + 3 - (time.monotonic() - opened_at), 0))
        still_open = 0
        for s in socks:
            try:
                if s.recv(1) != b"":
                    still_open += 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        health = httpx.get(server.url + "/health", timeout=10).status_code
        log = server.log.read_text()
    finally:
        for s in socks:
            s.close()
        server.close()
    return {"connections": len(socks), "open_seconds": round(opened, 2),
            "header_timeout_s": header_timeout, "max_connections": 512,
            "search_during": {"statuses": statuses, "p50_s": percentile(latencies, 0.5),
                              "max_s": round(max(latencies), 3)},
            "still_open_after_timeout_plus_3s": still_open, "health_after": health,
            "server_log_lines": len(log.splitlines()),
            "server_log": [line[:200] for line in log.splitlines()[:12]],
            "tracebacks_in_log": log.count("Traceback")}


# -- SIGKILL and resume -----------------------------------------------------------------------------------

def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


def kill_when(args: list[str], ready, timeout: float = 600) -> dict:
    """Run ``args``, SIGKILL it once ``ready()`` is true; returns what happened."""
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            return {"killed": False, "exit": proc.returncode}
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "after_s": round(time.monotonic() - started, 1)}
        time.sleep(0.2)
    stop(proc)
    return {"killed": False, "exit": "timeout"}


def run_cmd(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)


def resume_eval(work: Path, corpus: Path, questions: Path) -> dict:
    qa = work / "eval_qa.jsonl"
    qa.write_text("".join(line for _, line in zip(range(24), open(questions))))
    common = ["eval", "--model", "embedded:tiny-random", "--method", "search", "--engine", "bm25",
              "--corpus", str(corpus), "--datasets", str(qa), "--batch-size", "4",
              "--max-turns", "2", "--max-turn-tokens", "24", "--device", "cpu"]
    ref = run_cmd([*PY, *common, "-o", str(work / "eval_ref")])
    pred = work / "eval_cut" / "predictions" / "eval_qa.jsonl"
    kills = [kill_when([*PY, *common, "-o", str(work / "eval_cut")], lambda: _lines(pred) >= 8)]
    kills.append(kill_when([*PY, *common, "-o", str(work / "eval_cut")], lambda: _lines(pred) >= 16))
    final = run_cmd([*PY, *common, "-o", str(work / "eval_cut")])
    a = [json.loads(x) for x in open(work / "eval_ref" / "predictions" / "eval_qa.jsonl")]
    b = [json.loads(x) for x in open(pred)]
    ids = [r["id"] for r in b]
    return {"questions": len(a), "kills": kills, "exit_codes": [ref.returncode, final.returncode],
            "rows": len(b), "duplicates": len(ids) - len(set(ids)),
            "missing": len({r["id"] for r in a} - set(ids)),
            "identical_to_uninterrupted": sorted(a, key=lambda r: r["id"]) == sorted(b, key=lambda r: r["id"])}


def resume_collect(work: Path, corpus: Path, questions: Path) -> dict:
    common = ["sim", "collect", "--engine", "bm25", "--corpus", str(corpus), "--query-source",
              "question", "--train-data", str(questions), "--limit", "400", "--batch-size", "8"]
    ref = run_cmd([*PY, *common, "-o", str(work / "collect_ref.jsonl")])
    out = work / "collect_cut.jsonl"
    kills = [kill_when([*PY, *common, "-o", str(out)], lambda: _lines(out) >= 100),
             kill_when([*PY, *common, "-o", str(out)], lambda: _lines(out) >= 250)]
    final = run_cmd([*PY, *common, "-o", str(out)])
    a = [json.loads(x) for x in open(work / "collect_ref.jsonl")]
    b = [json.loads(x) for x in open(out)]
    ids = [r["row_id"] for r in b]
    strip = lambda rs: sorted((json.dumps({k: v for k, v in r.items() if "latency" not in k and k != "time"},  # noqa: E731
                                          sort_keys=True) for r in rs))
    return {"questions": len(a), "kills": kills, "exit_codes": [ref.returncode, final.returncode],
            "rows": len(b), "duplicates": len(ids) - len(set(ids)),
            "missing": len({r["row_id"] for r in a} - set(ids)),
            "identical_to_uninterrupted": strip(a) == strip(b)}


TRAIN_YAML = """model: {{name: "embedded:tiny-random"}}
data: {{train: "{qa}"}}
engine: {{kind: bm25, corpus: "{corpus}", topk: 2}}
rollout: {{max_turns: 2, max_turn_tokens: 16, max_completion_tokens: 160, max_obs_tokens: 64}}
algorithm: {{name: grpo, num_generations: 2}}
training: {{max_steps: 8, prompts_per_step: 2, micro_batch_size: 2, save_steps: 3,
           logging_steps: 1, report_to: [], learning_rate: 0.0001}}
"""


def resume_train(work: Path, corpus: Path, questions: Path) -> dict:
    qa = work / "train_qa.jsonl"
    qa.write_text("".join(line for _, line in zip(range(32), open(questions))))
    config = work / "train.yaml"
    config.write_text(TRAIN_YAML.format(qa=qa, corpus=corpus))
    ref = run_cmd([*PY, "train", "--config", str(config), "-o", str(work / "train_ref")])
    run = work / "train_cut"
    metrics = run / "metrics.jsonl"

    def at_step(n):
        def ready():
            if not metrics.exists():
                return False
            steps = [json.loads(x).get("step", 0) for x in open(metrics) if x.endswith("\n")]
            return bool(steps) and max(steps) >= n
        return ready

    kills = [kill_when([*PY, "train", "--config", str(config), "-o", str(run)], at_step(4))]
    kills.append(kill_when([*PY, "train", "--config", str(config), "-o", str(run), "--resume"],
                           at_step(7)))
    final = run_cmd([*PY, "train", "--config", str(config), "-o", str(run), "--resume"])
    rows = [json.loads(x) for x in open(metrics)]
    steps = [r["step"] for r in rows if "reward" in r]
    ref_rows = [json.loads(x) for x in open(work / "train_ref" / "metrics.jsonl")]
    ref_rewards = {r["step"]: r["reward"] for r in ref_rows if "reward" in r}
    rewards = {r["step"]: r["reward"] for r in rows if "reward" in r}
    return {"steps": 8, "save_steps": 3, "kills": kills,
            "exit_codes": [ref.returncode, final.returncode],
            "final_error": final.stderr[-400:] if final.returncode else None,
            "logged_steps": steps, "duplicates": len(steps) - len(set(steps)),
            "missing": sorted(set(range(1, 9)) - set(steps)),
            "final_model": (run / "final" / "model.safetensors").exists(),
            "rewards_equal_uninterrupted": rewards == ref_rewards,
            "staging_left": sorted(p.name for p in (run / ".staging").glob("*")) if (run / ".staging").exists() else []}


# -- main ----------------------------------------------------------------------------------------------------

SECTIONS = ("hostile", "load", "stall", "kill", "slowloris", "resume")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", default=str(OUT), help="results JSON (merged into if it exists)")
    parser.add_argument("--src", default=None,
                        help="run the processes from another source tree (e.g. the code before a "
                             "change, from `git archive`); results go under '<section>@<label>'")
    parser.add_argument("--label", default="baseline", help="name of that tree in the results")
    args = parser.parse_args()
    suffix = ""
    if args.src:
        global BASELINE
        BASELINE = True
        ENV["PYTHONPATH"] = str(Path(args.src).resolve())
        suffix = f"@{args.label}"
    wanted = [s for s in args.only.split(",") if s]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="zs-faults-") as tmp:
        work = Path(tmp)
        corpus, questions = corpus_and_questions(work)
        results["setup" + suffix] = {"src": ENV["PYTHONPATH"], "corpus": corpus.name, "questions": questions.parent.name,
                            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        for section in wanted:
            started = time.monotonic()
            print(f"== {section}", flush=True)
            if section == "hostile":
                result = run_hostile(work, corpus)
            elif section == "load":
                result = run_load(work, corpus, questions)
            elif section in ("stall", "kill"):
                result = run_backend_fault(work, section)
            elif section == "slowloris":
                result = run_slowloris(work, corpus)
            elif section == "resume":
                result = {"eval": resume_eval(work, corpus, questions),
                          "sim_collect": resume_collect(work, corpus, questions),
                          "train": resume_train(work, corpus, questions)}
            else:
                raise SystemExit(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
            result["section_seconds"] = round(time.monotonic() - started, 1)
            results[section + suffix] = result
            print(json.dumps(result, indent=1)[:3000], flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
