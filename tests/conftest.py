"""Shared fixtures: the tiny random model, the shared data, free ports, server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CORPUS = SHARED / "corpus" / "wiki_passages.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url, timeout=1.0).status_code in (200, 503):  # 503: up, back end not
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{url} not healthy after {timeout}s")


def stop_process(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL it after ``grace_s``: servers such as
    ``transformers serve`` may ignore SIGTERM or leave children behind."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, children included
    except ProcessLookupError:
        pass
    proc.wait(10)


class Server:
    """A process serving HTTP on a loopback port, in its own process group; stopped at the end
    (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, args: list[str], port: int, health: str = "/health", env=None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        try:
            wait_healthy(self.url + health, self.proc)
        except BaseException:
            self.kill()
            raise

    def kill(self, grace_s: float = 5.0) -> None:
        stop_process(self.proc, grace_s)


def zerosearch_serve(*flags: str) -> Server:
    port = free_port()
    return Server([sys.executable, "-m", "zerosearch.cli", "serve", "--port", str(port), *flags], port)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from zerosearch.models import resolve_model

    return resolve_model("embedded:tiny-random")


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not CORPUS.exists():
        pytest.skip(f"shared corpus not found at {CORPUS} (only a full checkout has ../shared)")
    return CORPUS


@pytest.fixture()
def tiny_corpus(tmp_path: Path) -> Path:
    rows = [
        ('"Paris"\nParis is the capital and largest city of France.', "p1"),
        ('"Berlin"\nBerlin is the capital of Germany and its largest city.', "p2"),
        ('"Charles Darwin"\nCharles Darwin wrote On the Origin of Species in 1859.', "p3"),
        ('"Mount Everest"\nMount Everest is the highest mountain above sea level.', "p4"),
        ('"Amazon River"\nThe Amazon is the largest river in South America by discharge.', "p5"),
    ]
    import json

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for c, i in rows))
    return path
