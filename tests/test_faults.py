"""The search service and long jobs under faults (issue 23): one test per defect of the audit.

Servers are real uvicorn servers on loopback ports (in a thread of this process, so they start in
a second), engines are real (BM25 on a tiny corpus, the tiny model in process), and the one thing
that cannot run here, a stalling or dying OpenAI-compatible back end, is a small local HTTP server
whose behaviour the test switches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import free_port, stop_process
from zerosearch.engines.base import Document, SearchRequest, SearchResult
from zerosearch.engines.bm25 import BM25Engine
from zerosearch.engines.simulated import SimulatedEngine
from zerosearch.llm.base import GenerationParams
from zerosearch.llm.openai_backend import OpenAIBackend
from zerosearch.retry import RetryPolicy

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- helpers ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def serving(engine, **settings):
    """The search service for ``engine`` on a free loopback port (uvicorn in a thread)."""
    import uvicorn

    from zerosearch.server import ServerConfig, uvicorn_config

    cfg = ServerConfig(port=free_port(), **settings)
    server = uvicorn.Server(uvicorn_config(engine, cfg))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{cfg.port}", server.config.loaded_app
    finally:
        server.should_exit = True
        thread.join(10)


class FakeChat:
    """An OpenAI-compatible chat endpoint whose behaviour the test switches: ``ok`` (answers at
    once), ``stall`` (holds every request until released), ``down`` (503). Counts requests."""

    def __init__(self):
        self.mode, self.requests = "ok", 0
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests += 1
                if fake.mode == "stall":
                    fake.release.wait(30)
                if fake.mode == "down":
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"choices": [{"message": {"content":
                                                            "Doc 1: one.\nDoc 2: two."}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def fake_chat():
    fake = FakeChat()
    yield fake
    fake.close()


def simulated_over(url: str, **policy) -> SimulatedEngine:
    return SimulatedEngine(OpenAIBackend([url], model="m", policy=RetryPolicy(**policy)),
                           params=GenerationParams(max_new_tokens=16))


@pytest.fixture()
def bm25(tiny_corpus):
    engine = BM25Engine(tiny_corpus, log=lambda m: None)
    yield engine
    engine.close()


def _metric_lines(url: str, name: str) -> list[str]:
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
    return [line for line in text.splitlines() if line.startswith(name)]


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closed ``sock`` (recv gives EOF) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


# -- 1. no retry storm after a stall; 13. defaults in seconds --------------------------------------

def test_1_a_504_cancels_its_backend_work_and_retries_are_counted(fake_chat):
    engine = simulated_over(fake_chat.url, timeout_s=1.0, max_retries=6, backoff_s=0.05,
                            deadline_s=60)
    body = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"], "topk": 2}]}
    with serving(engine, request_timeout_s=2.0) as (url, _):
        assert httpx.post(url + "/search", json=body, timeout=10).status_code == 200
        fake_chat.mode = "stall"
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            threads = [threading.Thread(target=lambda: statuses.append(
                client.post(url + "/search", json=body).status_code)) for _ in range(4)]
            statuses: list[int] = []
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert statuses == [504] * 4 and time.monotonic() - started < 4
        after_504 = fake_chat.requests
        time.sleep(2.5)  # the old loops kept retrying here (6 more attempts of 1 s each)
        assert fake_chat.requests == after_504, "attempts were made after the call answered 504"
        fake_chat.mode = "ok"
        fake_chat.release.set()
        started = time.monotonic()
        r = httpx.post(url + "/search", json=body, timeout=10)
        assert r.status_code == 200 and time.monotonic() - started < 1.0  # no backlog to drain
        [retries] = _metric_lines(url, "zerosearch_backend_retries_total")
        assert float(retries.split()[-1]) >= 4  # at least one retry per stalled call


def test_13_default_deadline_bounds_a_hung_backend_to_seconds():
    from zerosearch.engines.factory import EngineConfig, retry_policy

    policy = retry_policy(EngineConfig())
    assert policy.deadline_s <= 30 and policy.timeout_s <= policy.deadline_s
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never answers: a hung back end
    try:
        backend = OpenAIBackend([f"http://127.0.0.1:{silent.getsockname()[1]}"], model="m",
                                policy=RetryPolicy(timeout_s=5, max_retries=10, deadline_s=1.5))
        started = time.monotonic()
        [c] = backend.chat([[{"role": "user", "content": "hi"}]], GenerationParams())
        elapsed = time.monotonic() - started
        backend.close()
    finally:
        silent.close()
    assert c.text is None and c.error_kind == "timeout" and "deadline of 1.5s" in c.error
    assert elapsed < 2.5  # the deadline, not 11 attempts x 5 s


# -- 2. one client cannot fail the others; 3. lone surrogates ---------------------------------------

def test_2_a_bad_row_fails_alone_in_a_shared_generation_batch(tiny_model):
    from zerosearch.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend("embedded:tiny-random", max_batch_size=8)
    try:
        chats = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
        chats.insert(3, [{"role": "user", "content": "bad \ud800"}])
        out = backend.chat(chats, GenerationParams(max_new_tokens=4))
    finally:
        backend.close()
    assert [c.text is None for c in out] == [False, False, False, True, False, False, False]
    assert out[3].error_kind == "internal"


def test_2_the_service_refuses_bad_text_and_serves_the_concurrent_calls(tiny_model):
    from zerosearch.engines.factory import EngineConfig, build_engine

    engine = build_engine(EngineConfig(kind="simulated", model="embedded:tiny-random",
                                       max_new_tokens=8, seed=0))
    good = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"], "topk": 2}]}
    bad = {"requests": [{"query": "q", "question": "Q \ud800?", "golden_answers": ["A"], "topk": 2}]}
    with serving(engine) as (url, _):
        with httpx.Client(timeout=60) as client:
            answers: dict[int, httpx.Response] = {}

            def call(i):  # json.dumps escapes the surrogate as \ud800, as a JSON client would
                answers[i] = client.post(url + "/search", content=json.dumps(bad if i == 0 else good),
                                         headers={"content-type": "application/json"})

            threads = [threading.Thread(target=call, args=(i,)) for i in range(7)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert answers[0].status_code == 422 and "lone surrogate" in answers[0].json()["error"]
    for i in range(1, 7):  # the random model may write no documents (503 "no documents"), but
        r = answers[i]     # never fails because of the other client's text
        assert r.status_code in (200, 503), r.text
        assert r.status_code == 200 or "no documents" in r.json()["error"], r.text


class _Raising:
    name = "raising"

    def search(self, requests):
        raise RuntimeError("engine bug")

    def describe(self):
        return {"engine": self.name}

    def close(self):
        pass


class _Echo(_Raising):
    name = "echo"

    def search(self, requests):  # a document whose text is not valid Unicode
        return [SearchResult(r.query, [Document("text \udc80 here")], self.name, r.topk)
                for r in requests]


def test_3_lone_surrogates_are_4xx_and_a_500_is_json_and_counted(bm25):
    with serving(bm25, token=TOKEN) as (url, _):
        for path, body in (("/search", {"requests": [{"query": "x \ud800"}]}),
                           ("/retrieve", {"queries": ["\ud800"]})):
            r = httpx.post(url + path, content=json.dumps(body), timeout=10,
                           headers={**AUTH, "content-type": "application/json"})
            assert r.status_code == 422 and "lone surrogate" in r.json()["error"], r.text
    with serving(_Raising()) as (url, _):
        r = httpx.post(url + "/search", json={"requests": [{"query": "q"}]}, timeout=10)
        assert r.status_code == 500 and "internal error" in r.json()["error"]
        assert any('status="500"' in line for line in
                   _metric_lines(url, "zerosearch_http_requests_total"))
    with serving(_Echo()) as (url, _):
        r = httpx.post(url + "/search", json={"requests": [{"query": "q"}]}, timeout=10)
        assert r.status_code == 200 and r.json()["results"][0]["documents"][0]["text"] == "text \udc80 here"


# -- 4. body limit whatever the framing; 5. no event-loop stall -------------------------------------

def test_4_a_chunked_body_over_the_limit_is_cut_off_while_reading(bm25):
    with serving(bm25, max_body_bytes=1 << 20) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        sock = _raw(port, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 65536
        sent, answer = 0, b""
        try:
            while sent < 50 << 20:  # up to 50 MB; the server must answer long before
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(4096)
                    break
        except OSError:
            pass
        if not answer:
            sock.settimeout(5)
            answer = sock.recv(4096)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # cut off near the 1 MB limit, not after reading all 50 MB (loopback socket buffers hold a few MB
    # that the client sends before it sees the answer)
    assert sent < 16 << 20


def test_5_a_body_of_a_million_numbers_is_refused_without_blocking_health(bm25):
    body = json.dumps({"queries": [1] * 1_300_000}).encode()  # 3.9 MB, under the size limit
    assert len(body) < 4 * 1024 * 1024
    with serving(bm25) as (url, _):
        slowest = []
        done = threading.Event()

        def poll():
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    started = time.monotonic()
                    client.get(url + "/health")
                    slowest.append(time.monotonic() - started)
                    time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.monotonic()
        r = httpx.post(url + "/retrieve", content=body, timeout=30,
                       headers={"content-type": "application/json"})
        took = time.monotonic() - started
        done.set()
        poller.join()
    assert r.status_code == 413 and "elements" in r.json()["error"], r.text
    assert took < 10 and max(slowest) < 2.0, (took, max(slowest))


@pytest.mark.parametrize("payload,message", [
    (b'{"requests": [{"query": "q", "topk": ' + b"9" * 5000 + b"}]}", "4300 digits"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b'{"requests": [{"query": "q"}]', "not valid JSON"),
])
def test_14_unreadable_json_is_named_not_called_an_encoding_problem(bm25, payload, message):
    with serving(bm25) as (url, _):
        r = httpx.post(url + "/search", content=payload, timeout=10,
                       headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and message in r.json()["error"], r.text
    assert "UTF-8" not in r.json()["error"]


# -- 6. bounded metric labels -----------------------------------------------------------------------

def test_6_random_paths_share_one_metric_label(bm25):
    with serving(bm25, token=TOKEN) as (url, _):
        with httpx.Client(timeout=10) as client:
            for i in range(300):
                client.get(f"{url}/probe/{i}/{time.monotonic_ns()}")
        lines = _metric_lines(url, "zerosearch_http_requests_total")
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in lines}
    assert endpoints <= {"/search", "/retrieve", "/health", "/metrics", "other"}, endpoints
    assert any('endpoint="other",status="401"} 300.0' in line for line in lines), lines


# -- 7. header and body read timeouts, connection cap, logged once ---------------------------------

def test_7_slow_clients_are_cut_off_and_logged_once(bm25, caplog):
    caplog.set_level(logging.WARNING, logger="zerosearch.server")
    with serving(bm25, header_timeout_s=1.0, body_timeout_s=1.0, max_connections=20) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        half_open = [_raw(port, b"POST /search HTTP/1.1\r\nHost: x\r\n") for _ in range(5)]
        assert all(_closed_within(s, 4.0) for s in half_open), "half-open requests were kept"
        slow_body = _raw(port, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                               b"\r\nContent-Length: 100\r\n\r\n{\"requests\"")
        slow_body.settimeout(4)
        assert slow_body.recv(4096).startswith(b"HTTP/1.1 408")
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(25)]
        time.sleep(0.3)
        # a whole request still gets through: it evicts the oldest connection waiting for headers
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        evicted = sum(_closed_within(s, 0.2) for s in idle)
        assert evicted >= 5, evicted  # never more than 20 open at once
        for s in half_open + [slow_body] + idle:
            s.close()
        assert httpx.get(url + "/health", timeout=10).status_code == 200  # still serving
    header_logs = [r for r in caplog.records if "no complete request headers" in r.getMessage()]
    assert len(header_logs) == 1, [r.getMessage() for r in caplog.records]


# -- 8. /health tells the back end's state --------------------------------------------------------

def test_8_health_is_503_while_the_backend_is_down_and_hides_urls(fake_chat):
    engine = simulated_over(fake_chat.url, timeout_s=1.0, max_retries=0, deadline_s=2)
    body = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"], "topk": 2}]}
    with serving(engine, token=TOKEN, health_failures=3, health_probe_s=0.5) as (url, _):
        public = httpx.get(url + "/health", timeout=10)
        assert public.status_code == 200 and fake_chat.url not in public.text
        assert fake_chat.url[len("http://"):] in httpx.get(url + "/health", headers=AUTH).text
        fake_chat.mode = "down"
        for _ in range(3):
            assert httpx.post(url + "/search", json=body, headers=AUTH, timeout=10).status_code == 503
        r = httpx.get(url + "/health", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert r.json()["backend_state"]["consecutive_failures"] >= 3
        assert fake_chat.url not in r.text and "last_error" not in r.json()["backend_state"]
        fake_chat.mode = "ok"
        time.sleep(0.6)
        started = time.monotonic()
        r = httpx.get(url + "/health", timeout=10)  # probes the back end: it is back
        assert r.status_code == 200 and time.monotonic() - started < 2
        assert r.json()["backend_state"]["last_success_unix"] is not None


# -- 9, 10. training: metrics once per step after resume; checkpoints atomic -----------------------

from test_train import SIMULATED, _config, qa_file  # noqa: E402,F401 - the training fixtures


def test_9_10_a_kill_during_a_save_loses_no_checkpoint_and_resume_logs_each_step_once(
        tmp_path, qa_file, monkeypatch):
    from zerosearch.config import ConfigError
    from zerosearch.runfolder import last_checkpoint
    from zerosearch.train.run import train
    from zerosearch.train.trainer import ZeroSearchTrainer

    cfg = _config(tmp_path, qa_file, SIMULATED, "grpo", steps=3, save_steps=2, logging_steps=1)
    run = tmp_path / "run"
    original = ZeroSearchTrainer._save_rng_state

    def killed_at_step_3(self, output_dir):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("killed while saving checkpoint-3")
        return original(self, output_dir)

    monkeypatch.setattr(ZeroSearchTrainer, "_save_rng_state", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda m: None)
    monkeypatch.undo()
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-3").exists()
    steps = [json.loads(line).get("step") for line in open(run / "metrics.jsonl")]
    assert 3 in steps  # step 3 was logged before the kill

    logs: list[str] = []
    train(cfg, resume=True, log=logs.append)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]  # once each
    assert (run / "checkpoint-3" / "trainer_state.json").exists()
    assert not any((run / ".staging").glob("checkpoint-*"))

    weights = run / "checkpoint-3" / "model.safetensors"  # a save cut short by an old writer
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    logs.clear()
    assert last_checkpoint(str(run), logs.append) == str(run / "checkpoint-2")
    assert len(logs) == 1 and str(weights) in logs[0] and "truncated" in logs[0]
    (run / "checkpoint-2" / "trainer_state.json").write_text("{garbage")
    with pytest.raises(ConfigError) as err:
        last_checkpoint(str(run))
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    (run / "checkpoint-3").rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match="checkpoint-2/trainer_state.json is not a trainer state"):
        last_checkpoint(str(run))


# -- 11, 12. evaluation resume ------------------------------------------------------------------------

from test_evaluate import _cfg, data_dir, policy  # noqa: E402,F401 - the evaluation fixtures


class _Named:
    def __init__(self, name):
        self.name = name

    def search(self, requests):
        return [SearchResult(r.query, [Document(f"{self.name} doc")], self.name, r.topk)
                for r in requests]

    def describe(self):
        return {"engine": self.name}

    def close(self):
        pass


def test_11_eval_resume_refuses_another_engine(policy, data_dir, tmp_path):
    from zerosearch.evaluate import evaluate

    generator, tok = policy
    out = tmp_path / "out"
    evaluate(_cfg(data_dir, "search", limit=1), generator, tok, _Named("bm25"), out)
    with pytest.raises(ValueError, match="different engine"):
        evaluate(_cfg(data_dir, "search"), generator, tok, _Named("simulated"), out)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        evaluate(_cfg(data_dir, "search", limit=-1), generator, tok, _Named("bm25"), out)


def test_12_a_corrupt_line_is_quarantined_and_every_other_row_kept(policy, data_dir, tmp_path):
    from zerosearch.evaluate import evaluate
    from zerosearch.jsonl import read_finished

    generator, tok = policy
    out = tmp_path / "out"
    evaluate(_cfg(data_dir, "direct"), generator, tok, None, out)
    path = out / "predictions" / "alpha.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    warnings: list[str] = []
    records = read_finished(path, log=warnings.append)
    assert [r["id"] for r in records] == ["alpha0", "alpha1", "alpha2"]
    assert len(warnings) == 1 and "line(s) (2)" in warnings[0] and ".corrupt" in warnings[0]
    assert path.with_name("alpha.jsonl.corrupt").read_text() == "{not json\n"
    assert path.read_text() == "".join(lines)  # the bad line left, nothing else did
    before = path.read_text()
    evaluate(_cfg(data_dir, "direct"), generator, tok, None, out)
    assert path.read_text() == before  # nothing regenerated, nothing lost


# -- 14. smaller ------------------------------------------------------------------------------------

def _zs(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "zerosearch.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_14_cli_mistakes_are_one_line_errors(tiny_corpus, tmp_path):
    bad_corpus = tmp_path / "latin1.jsonl"
    bad_corpus.write_bytes(b'{"id": "1", "contents": "ok"}\n{"id": "2", "contents": "caf\xe9"}\n')
    cases = [
        (["serve", "--port", "99999", "--engine", "bm25", "--corpus", str(tiny_corpus)],
         "port must be between 0 and 65535"),
        (["serve", "--token", "", "--engine", "bm25", "--corpus", str(tiny_corpus)],
         "bearer token is empty"),
        (["eval", "--model", "embedded:tiny-random", "--method", "direct", "--limit", "-1",
          "--datasets", str(tmp_path / "qa.jsonl"), "-o", str(tmp_path / "e")],
         "limit must be at least 1"),
        (["search", "q", "--engine", "bm25", "--corpus", str(bad_corpus)], f"{bad_corpus}:2: not UTF-8"),
    ]
    (tmp_path / "qa.jsonl").write_text('{"id": "a", "question": "Q?", "golden_answers": ["A"]}\n')
    for args, message in cases:
        r = _zs(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in " ".join(r.stderr.split()), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert "--save-steps" in _zs("train", "--help").stdout


def test_14_test_servers_are_stopped_even_when_they_ignore_sigterm():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                            start_new_session=True)
    time.sleep(0.5)
    started = time.monotonic()
    stop_process(proc, grace_s=1.0)
    assert proc.poll() is not None and time.monotonic() - started < 5


@pytest.mark.parametrize("rank", [None, "0", "1"])
def test_only_rank_0_cuts_the_logs_back_on_resume(tmp_path, monkeypatch, rank):
    """Every process of a launched group calls prepare_resume; two of them rewriting the same log
    raced (one rename found the other's temporary file gone), so only rank 0 (or a lone process)
    cuts, and the others only read which checkpoint to resume."""
    import torch
    from safetensors.torch import save_file

    from zerosearch.runfolder import prepare_resume

    run = tmp_path / "run"
    checkpoint = run / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    logs = {name: "".join(json.dumps({"step": s}) + "\n" for s in (1, 2))
            for name in ("metrics.jsonl", "rollouts-rank-0.jsonl", "rollouts-rank-1.jsonl")}
    for name, text in logs.items():
        (run / name).write_text(text)
    from zerosearch.runfolder import RANK_VARIABLES

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    assert prepare_resume(str(run)) == str(checkpoint)
    for name, text in logs.items():
        steps = [json.loads(line)["step"] for line in (run / name).read_text().splitlines()]
        assert steps == ([1, 2] if rank == "1" else [1])


def test_the_process_rank_is_read_from_each_launcher(monkeypatch):
    from zerosearch.runfolder import RANK_VARIABLES, process_rank

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert process_rank() == 0  # launched alone
    monkeypatch.setenv("PMI_RANK", "3")  # mpirun sets no RANK
    assert process_rank() == 3
    monkeypatch.setenv("RANK", "1")  # torchrun / accelerate: RANK first
    assert process_rank() == 1
