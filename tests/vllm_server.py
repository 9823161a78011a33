"""A real vLLM OpenAI server (the CPU build in its own venv, see ``make venv-vllm``) for the
integration tests and the serving benchmark: start on a loopback port, wait for /health, stop with a
grace period (SIGTERM, then SIGKILL to the whole process group: vLLM runs its engine in a child)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-vllm"


def vllm_python() -> tuple[str | None, str]:
    """(python of the vLLM venv, or None; why not). ``ZEROSEARCH_VLLM_PYTHON`` overrides the path
    (``make test`` sets it)."""
    python = Path(os.environ.get("ZEROSEARCH_VLLM_PYTHON") or VENV / "bin" / "python")
    venv = python.parents[1]
    if (venv / ".installed").exists() and python.exists():
        return str(python), ""
    if (venv / ".failed").exists():
        log = venv / "build.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return None, f"the vLLM venv could not be built (see {log}): {' | '.join(tail)}"
    return None, f"no vLLM venv at {venv}: run `make venv-vllm` (`make test` builds it)"


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving ``model`` on ``port``."""

    def __init__(self, python: str, model: str, port: int, log_path: Path, name: str = "policy",
                 dtype: str = "float32", startup_s: float = 420.0, extra: tuple[str, ...] = (),
                 omp_cpus: str | None = None):
        """``omp_cpus`` pins the engine's OpenMP threads (``VLLM_CPU_OMP_THREADS_BIND``, e.g. "1");
        None keeps vLLM's automatic binding, which on a 2-core machine puts every server's threads
        on core 0 (core 1 is reserved for the schedulers), so two servers would fight over it."""
        self.port, self.name, self.url = port, name, f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "HF_HUB_OFFLINE": "1"}
        if omp_cpus is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = omp_cpus
        env.pop("PYTHONPATH", None)  # the vLLM venv must not see the project's packages
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
             "--served-model-name", name, "--dtype", dtype, "--max-model-len", "2048",
             "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait(startup_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vLLM not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def served_requests(self) -> float:
        """Requests this server finished (vLLM's Prometheus counter, all finish reasons)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))

    def crash(self) -> None:
        """SIGKILL the server and its engine at once (a crash, no clean shutdown)."""
        self._signal(signal.SIGKILL)
        self.proc.wait(30)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL the process group after ``grace_s``."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)  # the engine process may outlive the API server
        if self.proc.poll() is None:
            self.proc.wait(30)
        self._log.close()
