"""The ``zerosearch`` command line (typer). Thin: each command parses flags and calls the library."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.panel import Panel

from zerosearch.cli_engine import USER_ERRORS, console, fail, with_engine_options
from zerosearch.engines.base import SearchRequest
from zerosearch.engines.factory import EngineConfig, build_engine

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ZeroSearch: train LLMs to search with RL while an LLM plays the search engine.")
out = Console()


def _build(cfg: EngineConfig):
    with console.status(f"loading the {cfg.kind} engine…"):
        return build_engine(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))


@app.command()
@with_engine_options(model_alias=True)
def search(
    query: str = typer.Argument(..., help="The search query."),
    question: str = typer.Option("", "--question", "-q", help="The question being answered "
                                 "(simulated engines condition on it)."),
    answer: Optional[list[str]] = typer.Option(None, "--answer", "-a",
                                               help="Gold answer (repeatable)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Simulated: useful or noisy."),
    noise_prob: Optional[float] = typer.Option(None, "--noise-prob",
                                               help="Simulated: probability of noisy documents."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config (engine section)."),
    engine_cfg: EngineConfig = None,
):
    """Search once and print the documents as Doc i: lines."""
    try:
        request = SearchRequest(query=query, question=question, golden_answers=list(answer or []),
                                topk=engine_cfg.topk, mode=mode, noise_prob=noise_prob)
        request.validate()
        engine = _build(engine_cfg)
        try:
            result = engine.search([request])[0]
        finally:
            engine.close()
    except USER_ERRORS as err:
        fail(err)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    elif not sys.stdout.isatty():
        for i, doc in enumerate(result.documents, start=1):
            print(f"Doc {i}: " + (f"(Title: {doc.title}) " if doc.title else "") + doc.text)
    else:
        head = f"{result.engine}" + (f" · {result.mode}" if result.mode else "") + \
            f" · {result.latency_s:.2f}s"
        body = "\n".join(f"[bold]Doc {i}:[/] " + (f"[cyan]{doc.title}[/] " if doc.title else "")
                         + doc.text for i, doc in enumerate(result.documents, start=1))
        out.print(Panel(body or "[dim](no documents)[/]", title=query, subtitle=head))
    if result.error:
        console.print(f"[bold red]search failed ({result.error_kind}):[/] {result.error}")
        raise typer.Exit(1)
    if result.shortfall:
        console.print(f"[yellow]{len(result.documents)} of {result.topk} documents returned[/]")


@app.command()
@with_engine_options(model_alias=True)
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(6001, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="ZEROSEARCH_TOKEN",
                                        help="Require this bearer token."),
    max_batch: int = typer.Option(256, "--max-batch", help="Most queries in one call."),
    request_timeout: float = typer.Option(300.0, "--request-timeout",
                                          help="Upper bound on one call (s); then 504."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config (engine section)."),
    engine_cfg: EngineConfig = None,
):
    """Serve an engine over HTTP: /search, /retrieve (Search-R1 API), /health, /metrics."""
    from zerosearch.server import ServerConfig, serve as run_server

    try:
        server_cfg = ServerConfig(host=host, port=port, token=token, max_batch=max_batch,
                                  request_timeout_s=request_timeout)
        engine = _build(engine_cfg)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]serving the {engine_cfg.kind} engine on http://{host}:{port}[/] "
                  "(POST /search, POST /retrieve, GET /health, GET /metrics)")
    run_server(engine, server_cfg, log=lambda m: console.print(f"[yellow]{m}[/]"))


@app.command()
@with_engine_options()
def train(
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="YAML preset (configs/*.yaml); flags override it."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Policy model."),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", help="grpo, reinforce++ or ppo."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps."),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="QA training data."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N questions."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    engine_cfg: EngineConfig = None,
):
    """Train a search policy with RL (GRPO / REINFORCE++ / PPO) against any engine."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import last_checkpoint, train as run_training

    try:
        cfg = load_train_config(config, {
            "model": {"name": model}, "algorithm": {"name": algorithm},
            "data": {"train": train_data, "limit": limit},
            "training": {"max_steps": max_steps, "output_dir": output_dir}})
        cfg.engine = engine_cfg  # the YAML's engine section with the engine flags applied
        cfg.validate()
        if resume:
            last_checkpoint(cfg.training.output_dir)
    except USER_ERRORS as err:
        fail(err)
    progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console)
    task = progress.add_task("train", total=cfg.training.max_steps, info="")

    def on_progress(step: int, total: int, record: dict) -> None:
        if "reward" in record:
            info = (f"reward {record['reward']:.3f} · searches "
                    f"{record.get('zerosearch/searches_per_question', 0):.2f} · noise "
                    f"{record.get('zerosearch/noise_prob') or 0:.2f}")
            progress.update(task, completed=step, info=info)

    try:
        with progress:
            final = run_training(cfg, resume=resume, log=lambda m: console.print(f"[dim]{m}[/]"),
                                 on_progress=on_progress)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]done:[/] final model in {final}; metrics in "
                  f"{cfg.training.output_dir}/metrics.jsonl")


if __name__ == "__main__":
    app()
