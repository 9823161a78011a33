"""Documents per second through `zerosearch serve` vs. the same simulation back end reached directly,
and vs. the public ZeroSearch client pattern (a new OpenAI client per call, 10 worker threads).

All three paths hit one OpenAI-compatible back end (by default `transformers serve
--continuous-batching` with the embedded SmolLM2 on this machine), send the same fine-tuned-simulator
prompts (greedy decoding, so outputs and lengths are the same on every path) and count documents with
the same parser. Only the client side differs:

- direct:  N threads, one pooled httpx client, POST /v1/chat/completions per query;
- ours:    N threads, one pooled httpx client, POST /search (one query per call) to zerosearch serve,
           which reaches the back end through its load-balancing OpenAI client;
- public:  min(N, 10) threads (the public code's pool size), a new `openai.OpenAI` client per call.

Run: `.venv/bin/python benchmarks/serve_throughput.py` (about 10 minutes on 2 CPU cores), or point it
at a GPU server with `--backend-url http://host:port/v1 --backend-model NAME`. Writes
runs/bench/serve_throughput.json and prints the table with the ratios.
"""

from __future__ import annotations

import json
import os
import socket
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
QA = ROOT.parent / "shared" / "data" / "qa" / "train" / "hotpot_2wiki.jsonl"
console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], health: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:4]} exited with {proc.returncode}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{health} never became healthy")


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


def main(
    backend_url: str = typer.Option(None, help="Use this OpenAI-compatible back end instead of "
                                    "starting transformers serve."),
    backend_model: str = typer.Option(None, help="Model name at --backend-url."),
    model: str = typer.Option("embedded:smollm2-135m-instruct", help="Model for the local back end."),
    concurrency: str = typer.Option("1,8,32", help="Client concurrency levels."),
    calls_per_worker: int = typer.Option(2, help="Queries per client thread at each level."),
    min_calls: int = typer.Option(8, help="At least this many queries per measurement."),
    max_new_tokens: int = typer.Option(96, help="Simulator output budget."),
    topk: int = typer.Option(5, help="Documents asked per query."),
    out: Path = typer.Option(ROOT / "runs" / "bench" / "serve_throughput.json"),
):
    procs = []
    try:
        if backend_url is None:
            path = resolve_model(model)
            port = _free_port()
            console.print(f"starting transformers serve --continuous-batching ({model}) on :{port}")
            procs.append(_start([sys.executable, "-m", "transformers.cli.transformers", "serve", path,
                                 "--port", str(port), "--device", "cpu", "--continuous-batching"],
                                f"http://127.0.0.1:{port}/health", {"HF_HUB_OFFLINE": "1"}))
            backend_url, backend_model = f"http://127.0.0.1:{port}/v1", path
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
        rows = []
        for level in levels:
            requests = _requests(max(min_calls, level * calls_per_worker), topk)
            row = {"concurrency": level, "queries": len(requests)}
            for name, fn, workers in (("direct", direct, level), ("ours", ours, level),
                                      ("public", public, min(level, 10))):
                docs, seconds = _run(fn, requests, workers)
                row[name] = {"docs": docs, "seconds": round(seconds, 2),
                             "docs_per_s": round(docs / seconds, 2)}
                console.print(f"c={level:>2} {name:<6} {docs} docs in {seconds:.1f}s "
                              f"= {docs / seconds:.2f} docs/s")
            row["ours_vs_direct"] = round(row["ours"]["docs_per_s"] / row["direct"]["docs_per_s"], 3)
            row["ours_vs_public"] = round(row["ours"]["docs_per_s"] / row["public"]["docs_per_s"], 3)
            rows.append(row)
        table = Table(title="documents/second through /search (higher is better)")
        for col in ("concurrency", "direct", "ours", "public", "ours/direct", "ours/public"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(str(row["concurrency"]), *(f"{row[k]['docs_per_s']:.2f}"
                                                     for k in ("direct", "ours", "public")),
                          f"{row['ours_vs_direct']:.2f}", f"{row['ours_vs_public']:.2f}")
        console.print(table)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"backend": backend_url, "model": backend_model,
                                   "max_new_tokens": max_new_tokens, "cpu_count": os.cpu_count(),
                                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
        console.print(f"wrote {out}")
    finally:
        for proc in procs:
            proc.kill()


if __name__ == "__main__":
    typer.run(main)
