"""Run today's ``tests/test_faults.py`` against the code from before the fault work (issue 23).

Each test there reproduces one defect of the audit, so each must fail on the code the audit read.
That code's interfaces differ from today's in six places the tests reach through: no retry module,
no ``uvicorn_config``, ``ServerConfig`` without the edge and health fields, ``OpenAIBackend``
without a ``policy``, ``read_finished`` without a ``log``, and ``generation`` a module, not a
package. This script bridges exactly those with adapters that keep the old behaviour (the old
uvicorn settings, the new config fields present but never read, the old retry knobs and defaults),
so a test fails on what the old code *does*, not on a missing name. It writes every test's outcome
and first assertion line as JSON.

    python benchmarks/faults_on_old_code.py                  # fced711: the parent of the fault work
    python benchmarks/faults_on_old_code.py -o docs/results/faults_tests_on_old_code.json
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]

# Adapters, appended or substituted in the old tree (test harness only, never in src/).
_SERVER = '''

def uvicorn_config(engine, config, log=print):  # adapter: the settings the old serve() passed
    import uvicorn
    return uvicorn.Config(create_app(engine, config), host=config.host, port=config.port,
                          log_level="warning", access_log=False)
'''
_SERVER_FIELDS = ("    header_timeout_s: float = 0.0\n    body_timeout_s: float = 0.0\n"
                  "    max_connections: int = 0\n    health_failures: int = 0\n"
                  "    health_probe_s: float = 0.0\n    keep_alive_s: float = 5.0\n")
_FACTORY = '''

def retry_policy(cfg):  # adapter: the old defaults as one policy (every attempt, no deadline)
    from zerosearch.retry import RetryPolicy
    return RetryPolicy(timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                       deadline_s=cfg.timeout_s * (cfg.max_retries + 1))
'''
_BACKEND_OLD = "                 max_concurrency: int = 64, cooldown_s: float = 5.0):\n"
_BACKEND_NEW = ("                 max_concurrency: int = 64, cooldown_s: float = 5.0, policy=None):\n"
                "        if policy is not None:  # adapter: the new policy on the old knobs\n"
                "            timeout_s, max_retries, backoff_s = (policy.timeout_s, policy.max_retries,\n"
                "                                                 policy.backoff_s)\n")


def _substitute(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise SystemExit(f"{path}: the text to adapt is not there; this script fits commit fced711")
    path.write_text(text.replace(old, new, 1))


def old_tree(commit: str, into: Path) -> Path:
    """``src/`` of ``commit`` under ``into``, with the adapters; returns the src folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True,
                             capture_output=True).stdout
    tarfile.open(fileobj=BytesIO(archive)).extractall(into)
    pkg = into / "src" / "zerosearch"
    (pkg / "retry.py").write_text((ROOT / "src" / "zerosearch" / "retry.py").read_text())
    generation = pkg / "generation.py"
    (pkg / "generation").mkdir()
    generation.rename(pkg / "generation" / "__init__.py")
    (pkg / "generation" / "hf.py").write_text(
        "from zerosearch.generation import HFGenerator, load_policy  # noqa\n")
    with open(pkg / "server.py", "a") as f:
        f.write(_SERVER)
    _substitute(pkg / "server.py", "    request_timeout_s: float = 300.0\n",
                "    request_timeout_s: float = 300.0\n" + _SERVER_FIELDS)
    with open(pkg / "engines" / "factory.py", "a") as f:
        f.write(_FACTORY)
    _substitute(pkg / "llm" / "openai_backend.py", _BACKEND_OLD, _BACKEND_NEW)
    _substitute(pkg / "jsonl.py", "def read_finished(path: str | Path) -> list[dict[str, Any]]:\n",
                "def read_finished(path: str | Path, log=None) -> list[dict[str, Any]]:  # adapter: log unused\n")
    return into / "src"


def main(commit: str = typer.Option("fced711", "--commit", help="The code before the fault work."),
         output: Path = typer.Option(None, "--output", "-o", help="Also write the JSON here.")):
    with tempfile.TemporaryDirectory() as tmp:
        src = old_tree(commit, Path(tmp))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                               "tests/test_faults.py"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(src)}, timeout=1800)
    log = proc.stdout
    outcomes = {m.group(2): m.group(1) for m in re.finditer(
        r"^(PASSED|FAILED|ERROR) tests/test_faults.py::(.+?)(?: - .*)?$", log, re.M)}
    reasons: dict[str, str] = {}
    parts = re.split(r"^_+ (?:ERROR at setup of )?(.+?) _+$", log, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        first = next((line[1:].strip() for line in body.splitlines() if line.startswith("E ")), "")
        reasons[name] = first[:300]
    if not outcomes:
        raise SystemExit(f"pytest reported no test (exit {proc.returncode}):\n"
                         f"{log[-3000:]}{proc.stderr[-2000:]}")
    failed = sum(v != "PASSED" for v in outcomes.values())
    result = {"commit": commit, "command": "python benchmarks/faults_on_old_code.py",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "seconds": round(time.monotonic() - started, 1),
              "failed": failed, "passed": len(outcomes) - failed,
              "tests": {name: {"outcome": outcome, "first_error": reasons.get(name, "")}
                        for name, outcome in outcomes.items()}}
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        output.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
