"""Documents per second through `zerosearch serve` vs. the same simulation back end reached directly,
and vs. the public ZeroSearch client pattern (a new OpenAI client per call, 10 worker threads).

All three paths hit one OpenAI-compatible back end (by default vLLM's CPU build from `.venv-vllm`,
prefix caching off, serving the embedded SmolLM2; `--backend transformers` starts `transformers
serve --continuous-batching` instead), send the same fine-tuned-simulator prompts (greedy decoding,
so outputs and lengths are the same on every path) and count documents with the same parser. Only
the client side differs:

- direct:  N threads, one pooled httpx client, POST /v1/chat/completions per query;
- ours:    N threads, one pooled httpx client, POST /search (one query per call) to zerosearch serve,
           which reaches the back end through its load-balancing OpenAI client;
- public:  min(N, 10) threads (the public code's pool size), a new `openai.OpenAI` client per call.

Each round runs every concurrency level once, the three paths in a fresh random order (a fixed
order would let a warm cache favour the later paths); the table reports each path's median over
the rounds. Run: `.venv/bin/python benchmarks/serve_throughput.py` (`make bench`), or point it at a
GPU server with `--backend-url http://host:port/v1 --backend-model NAME`. Writes
runs/bench/serve_throughput.json (`--out` to change) and prints the table with the ratios.
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from zerosearch.engines.base import SearchRequest
from zerosearch.models import resolve_model
from zerosearch.protocol import finetuned_sim_messages, parse_documents

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
QA = ROOT.parent / "shared" / "data" / "qa" / "train" / "hotpot_2wiki.jsonl"
console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], health: str, env: dict | None = None,
           clean_env: bool = False) -> subprocess.Popen:
    """Start a server (in its own process group) and wait for ``health``; ``clean_env``: ``env``
    is the whole environment (the vLLM venv must not see this project's PYTHONPATH)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=env if clean_env else {**os.environ, **(env or {})},
                            start_new_session=True)
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:4]} exited with {proc.returncode}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"{health} never became healthy")


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the engine child may outlive the server
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _requests(n: int, topk: int) -> list[SearchRequest]:
    rows = []
    if QA.exists():
        with open(QA) as f:
            for line in f:
                row = json.loads(line)
                rows.append(SearchRequest(row["question"], row["question"], row["golden_answers"],
                                          topk=topk, mode="useful" if len(rows) % 2 else "noisy"))
                if len(rows) == n:
                    break
    while len(rows) < n:  # no shared data: synthetic but varied queries
        i = len(rows)
        rows.append(SearchRequest(f"facts about the year {1800 + i}", f"What happened in {1800 + i}?",
                                  [str(1800 + i)], topk=topk, mode="useful" if i % 2 else "noisy"))
    return rows


def _run(fn, requests: list[SearchRequest], workers: int) -> tuple[int, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        docs = sum(pool.map(fn, requests))
    return docs, time.perf_counter() - started


TARGET_OVERHEAD, TARGET_VS_PUBLIC = 0.95, 2.0  # ours >= 95% of direct; >= 2x public at c=32


def markdown(report: dict) -> str:
    """The results as a Markdown table, with the targets marked met or missed."""
    lines = [f"# Serving throughput: {report['backend_kind']} back end ({report['date']})", "",
             f"`benchmarks/serve_throughput.py`, {report['model']} at {report['backend']}, "
             f"{report['max_new_tokens']} new tokens a query, greedy; the three paths in a random "
             f"order each round (seed {report['seed']}); median documents/s of {report['rounds']} "
             f"rounds; {report['cpu_count']} CPUs"
             + (f", VLLM_CPU_NUM_OF_RESERVED_CPU={report['vllm_reserved_cpus']}"
                if report.get("vllm_reserved_cpus") is not None else "") + ".", "",
             "| concurrency | queries | direct | ours | public | ours/direct | ours/public |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        lines.append(f"| {row['concurrency']} | {row['queries']} | "
                     + " | ".join(f"{row[k]['docs_per_s']:.2f}" for k in ("direct", "ours", "public"))
                     + f" | {row['ours_vs_direct']:.2f} | {row['ours_vs_public']:.2f} |")
    lines += ["", "Targets:"]
    worst = min(report["rows"], key=lambda r: r["ours_vs_direct"])
    lines.append(f"- overhead <= 5% over direct at every level: "
                 f"{'met' if worst['ours_vs_direct'] >= TARGET_OVERHEAD else 'missed'} (lowest "
                 f"ours/direct {worst['ours_vs_direct']:.2f}, at concurrency {worst['concurrency']})")
    at32 = next((r for r in report["rows"] if r["concurrency"] == 32), None)
    if at32 is not None:
        lines.append(f"- >= 2x the public client pattern at concurrency 32: "
                     f"{'met' if at32['ours_vs_public'] >= TARGET_VS_PUBLIC else 'missed'} "
                     f"(ours/public {at32['ours_vs_public']:.2f})")
    spread = [f"c={r['concurrency']} {name}: " + ", ".join(f"{x['docs_per_s']:.2f}" for x in r[name]["rounds"])
              for r in report["rows"] for name in ("direct", "ours", "public")]
    lines += ["", "Every round (documents/s):", ""] + [f"- {s}" for s in spread]
    return "\n".join(lines) + "\n"


def main(
    render: Path = typer.Option(None, help="Only write the Markdown table of an earlier run's JSON "
                                "(beside it, .md)."),
    backend: str = typer.Option("vllm", help="Local back end to start: vllm (from .venv-vllm) or "
                                "transformers (transformers serve --continuous-batching)."),
    backend_url: str = typer.Option(None, help="Use this OpenAI-compatible back end instead of "
                                    "starting one."),
    backend_model: str = typer.Option(None, help="Model name at --backend-url."),
    model: str = typer.Option("embedded:smollm2-135m-instruct", help="Model for the local back end."),
    concurrency: str = typer.Option("1,8,32,64", help="Client concurrency levels."),
    calls_per_worker: int = typer.Option(1, help="Queries per client thread at each level."),
    min_calls: int = typer.Option(8, help="At least this many queries per measurement."),
    rounds: int = typer.Option(3, help="Rounds (every level and path once each); medians reported."),
    max_new_tokens: int = typer.Option(64, help="Simulator output budget."),
    topk: int = typer.Option(5, help="Documents asked per query."),
    seed: int = typer.Option(0, help="Seed of the path order in each round."),
    vllm_reserved_cpus: int = typer.Option(None, help="VLLM_CPU_NUM_OF_RESERVED_CPU for the local "
                                           "vLLM (unset: vLLM's default, one CPU kept for its "
                                           "front end; 0 gives the engine every CPU)."),
    out: Path = typer.Option(ROOT / "runs" / "bench" / "serve_throughput.json"),
):
    if render is not None:
        render.with_suffix(".md").write_text(markdown(json.loads(render.read_text())))
        console.print(f"wrote {render.with_suffix('.md')}")
        return
    procs = []
    try:
        if backend_url is None:
            path = resolve_model(model)
            port = _free_port()
            if backend == "vllm":
                if not VLLM_PYTHON.exists():
                    raise typer.BadParameter(f"{VLLM_PYTHON} not found: run `make venv-vllm`")
                console.print(f"starting vLLM (CPU, eager, prefix caching off; {model}) on :{port}")
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                if vllm_reserved_cpus is not None:
                    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(vllm_reserved_cpus)
                procs.append(_start([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
                                     "--model", path, "--served-model-name", "sim", "--dtype",
                                     "bfloat16", "--max-model-len", "2048", "--enforce-eager",
                                     "--no-enable-prefix-caching", "--host", "127.0.0.1",
                                     "--port", str(port)], f"http://127.0.0.1:{port}/health",
                                    {**env, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"},
                                    clean_env=True))
                backend_url, backend_model = f"http://127.0.0.1:{port}/v1", "sim"
            elif backend == "transformers":
                console.print(f"starting transformers serve --continuous-batching ({model}) on :{port}")
                procs.append(_start([sys.executable, "-m", "transformers.cli.transformers", "serve",
                                     path, "--port", str(port), "--device", "cpu",
                                     "--continuous-batching"],
                                    f"http://127.0.0.1:{port}/health", {"HF_HUB_OFFLINE": "1"}))
                backend_url, backend_model = f"http://127.0.0.1:{port}/v1", path
            else:
                raise typer.BadParameter(f"--backend must be vllm or transformers, not {backend!r}")
        if not backend_model:
            raise typer.BadParameter("--backend-model is required with --backend-url")
        zport = _free_port()
        procs.append(_start([sys.executable, "-m", "zerosearch.cli", "serve", "--engine", "simulated",
                             "--backend-url", backend_url, "--backend-model", backend_model,
                             "--temperature", "0", "--max-new-tokens", str(max_new_tokens),
                             "--timeout", "600", "--port", str(zport)],
                            f"http://127.0.0.1:{zport}/health"))
        zurl = f"http://127.0.0.1:{zport}"
        pooled = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        body = lambda r: {"model": backend_model, "max_tokens": max_new_tokens, "temperature": 0.0,
                          "messages": finetuned_sim_messages(r.query, r.question, r.golden_answers,
                                                             r.mode, r.topk)}

        def direct(r: SearchRequest) -> int:
            resp = pooled.post(f"{backend_url}/chat/completions", json=body(r))
            resp.raise_for_status()
            return len(parse_documents(resp.json()["choices"][0]["message"]["content"], r.topk))

        def ours(r: SearchRequest) -> int:
            resp = pooled.post(f"{zurl}/search", json={"requests": [{
                "query": r.query, "question": r.question, "golden_answers": r.golden_answers,
                "topk": r.topk, "mode": r.mode}]})
            resp.raise_for_status()
            return len(resp.json()["results"][0]["documents"])

        def public(r: SearchRequest) -> int:
            from openai import OpenAI

            client = OpenAI(base_url=backend_url, api_key="EMPTY", timeout=600)  # new client per call
            b = body(r)
            reply = client.chat.completions.create(model=b["model"], messages=b["messages"],
                                                   max_tokens=b["max_tokens"], temperature=0.0)
            return len(parse_documents(reply.choices[0].message.content or "", r.topk))

        levels = [int(c) for c in concurrency.split(",")]
        warm = _requests(2, topk)
        for fn in (direct, ours, public):
            _run(fn, warm, 2)
        paths = {"direct": (direct, lambda n: n), "ours": (ours, lambda n: n),
                 "public": (public, lambda n: min(n, 10))}
        order_rng = random.Random(seed)
        samples: dict[int, dict[str, list[dict]]] = {lv: {p: [] for p in paths} for lv in levels}
        for round_ in range(rounds):
            for level in levels:
                requests = _requests(max(min_calls, level * calls_per_worker), topk)
                order = list(paths)
                order_rng.shuffle(order)
                for name in order:
                    fn, workers = paths[name]
                    docs, seconds = _run(fn, requests, workers(level))
                    samples[level][name].append({"docs": docs, "seconds": round(seconds, 2),
                                                 "docs_per_s": round(docs / seconds, 3),
                                                 "queries_per_s": round(len(requests) / seconds, 3)})
                    console.print(f"round {round_ + 1} c={level:>2} {name:<6} {docs} docs in "
                                  f"{seconds:.1f}s = {docs / seconds:.2f} docs/s")
        rows = []
        for level in levels:
            row = {"concurrency": level, "queries": max(min_calls, level * calls_per_worker)}
            for name in paths:
                runs = samples[level][name]
                row[name] = {"docs_per_s": round(statistics.median(r["docs_per_s"] for r in runs), 3),
                             "queries_per_s": round(statistics.median(r["queries_per_s"] for r in runs), 3),
                             "rounds": runs}
            row["ours_vs_direct"] = round(row["ours"]["docs_per_s"] / row["direct"]["docs_per_s"], 3)
            row["ours_vs_public"] = round(row["ours"]["docs_per_s"] / row["public"]["docs_per_s"], 3)
            rows.append(row)
        table = Table(title=f"documents/second, median of {rounds} rounds (higher is better)")
        for col in ("concurrency", "direct", "ours", "public", "ours/direct", "ours/public"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(str(row["concurrency"]), *(f"{row[k]['docs_per_s']:.2f}"
                                                     for k in ("direct", "ours", "public")),
                          f"{row['ours_vs_direct']:.2f}", f"{row['ours_vs_public']:.2f}")
        console.print(table)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"backend": backend_url, "backend_kind": backend, "model": backend_model,
                  "vllm_reserved_cpus": vllm_reserved_cpus,
                  "rounds": rounds, "seed": seed, "max_new_tokens": max_new_tokens,
                  "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(markdown(report))
        console.print(f"wrote {out} and {out.with_suffix('.md')}")
    finally:
        for proc in reversed(procs):  # a grace period, then the whole group (vLLM's engine child)
            _stop(proc)


if __name__ == "__main__":
    typer.run(main)
