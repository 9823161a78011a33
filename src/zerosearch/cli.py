"""The ``zerosearch`` command line (typer). Thin: each command parses flags and calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.panel import Panel

from zerosearch.cli_engine import (USER_ERRORS, console, fail, field_option, named_progress,
                                   section_config, with_engine_options)
from zerosearch.engines.base import SearchRequest
from zerosearch.engines.factory import EngineConfig, build_engine
from zerosearch.evaluate import EvalConfig
from zerosearch.protocol import document_line
from zerosearch.qa import BENCHMARKS
from zerosearch.rollout import RolloutConfig
from zerosearch.server import ServerConfig
from zerosearch.sim.collect import CollectConfig
from zerosearch.sim.tune import SimTrainConfig
from zerosearch.train.config import AlgorithmConfig, DataConfig, ModelConfig, TrainingConfig

_DOC_FORMAT_HELP = ("Document lines for the policy: zerosearch (Doc 1: text), search-r1 "
                    "(Doc 1(Title: \"T\") text) or auto (by the policy's name).")

_ENGINE_CONFIG_HELP = "YAML file (a train preset works): its engine: section; flags given win."
_POLICY_CONFIG_HELP = ("YAML file (a train preset works): its engine: section and the rollout "
                       "budget of its rollout: section (turns, tokens, document lines; not the "
                       "sampling temperature); flags given win.")


def _rollout_budget(ctx: typer.Context, config: Optional[str], engine_cfg: EngineConfig) -> RolloutConfig:
    """The policy's rollout for eval and ask: the ``rollout:`` section of ``--config`` (so a run
    evaluated with its training preset gets the training budget) with the flags given on top; the
    temperature is the command's own (greedy unless ``--temperature``), the topk the engine's."""
    return section_config(ctx, config, "rollout", RolloutConfig,
                          {"max_turns": "max_turns", "max_turn_tokens": "max_turn_tokens",
                           "temperature": "policy_temperature", "doc_format": "doc_format"},
                          ignore=("temperature",), topk=engine_cfg.topk)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ZeroSearch: train LLMs to search with RL while an LLM plays the search engine.")
out = Console(soft_wrap=True)  # tables and JSON must not be re-wrapped


def _build(cfg: EngineConfig):
    with console.status(f"loading the {cfg.kind} engine…"):
        return build_engine(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))


@app.command()
@with_engine_options(no_policy=True)
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
    config: Optional[str] = typer.Option(None, "--config", "-c", help=_ENGINE_CONFIG_HELP),
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
            print(f"Doc {i}: {document_line(doc.title, doc.text)}")
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
@with_engine_options(no_policy=True)
def serve(
    ctx: typer.Context,
    host: str = field_option(ServerConfig, "host", "--host"),
    port: int = field_option(ServerConfig, "port", "--port"),
    token: Optional[str] = field_option(ServerConfig, "token", "--token", envvar="ZEROSEARCH_TOKEN"),
    max_batch: int = field_option(ServerConfig, "max_batch", "--max-batch"),
    noise_prob: Optional[float] = field_option(ServerConfig, "noise_prob", "--noise-prob"),
    request_timeout: float = field_option(ServerConfig, "request_timeout_s", "--request-timeout"),
    header_timeout: float = field_option(ServerConfig, "header_timeout_s", "--header-timeout"),
    body_timeout: float = field_option(ServerConfig, "body_timeout_s", "--body-timeout"),
    max_connections: int = field_option(ServerConfig, "max_connections", "--max-connections"),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="YAML file: its engine: and server: sections (the server's "
        "limits without a flag too: max_query_chars, max_topk, max_body_bytes…); flags given win."),
    engine_cfg: EngineConfig = None,
):
    """Serve an engine over HTTP: /search, /retrieve (Search-R1 API), /noise, /health, /metrics."""
    from zerosearch.server import serve as run_server

    try:
        server_cfg = section_config(ctx, config, "server", ServerConfig, {
            "host": "host", "port": "port", "token": "token", "max_batch": "max_batch",
            "noise_prob": "noise_prob", "request_timeout_s": "request_timeout",
            "header_timeout_s": "header_timeout", "body_timeout_s": "body_timeout",
            "max_connections": "max_connections"}, default_topk=engine_cfg.topk)
        server_cfg.validate()
        engine = _build(engine_cfg)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]serving the {engine_cfg.kind} engine on "
                  f"http://{server_cfg.host}:{server_cfg.port}[/] "
                  "(POST /search, POST /retrieve, GET|POST /noise, GET /health, GET /metrics)")
    run_server(engine, server_cfg, log=lambda m: console.print(f"[yellow]{m}[/]"))


@app.command()
@with_engine_options()
def train(
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="YAML preset (configs/*.yaml); flags override it."),
    model: Optional[str] = field_option(ModelConfig, "name", "--model", "-m", default=None),
    algorithm: Optional[str] = field_option(AlgorithmConfig, "name", "--algorithm", default=None),
    max_steps: Optional[int] = field_option(TrainingConfig, "max_steps", "--max-steps", default=None),
    train_data: Optional[str] = field_option(DataConfig, "train", "--train-data", default=None),
    limit: Optional[int] = field_option(DataConfig, "limit", "--limit", default=None),
    output_dir: Optional[str] = field_option(TrainingConfig, "output_dir", "--output-dir", "-o", default=None),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    save_steps: Optional[int] = field_option(TrainingConfig, "save_steps", "--save-steps", default=None),
    engine_cfg: EngineConfig = None,
):
    """Train a search policy with RL (GRPO / REINFORCE++ / PPO) against any engine. Flags left out
    take the preset's value (--config), else the dataclass default of train/config.py."""
    from zerosearch.train.config import load_train_config
    from zerosearch.runfolder import last_checkpoint
    from zerosearch.train.run import train as run_training

    try:
        cfg = load_train_config(config, {
            "model": {"name": model}, "algorithm": {"name": algorithm},
            "data": {"train": train_data, "limit": limit},
            "training": {"max_steps": max_steps, "output_dir": output_dir,
                         "save_steps": save_steps}})
        cfg.engine = engine_cfg  # the YAML's engine section with the engine flags applied
        cfg.validate()
        if resume:
            last_checkpoint(cfg.training.output_dir, log=lambda m: None)  # warnings come later
    except USER_ERRORS as err:
        fail(err)
    progress, update = named_progress(5)
    update("train", 0, cfg.training.max_steps)

    def on_progress(step: int, total: int, record: dict) -> None:
        if "reward" in record:
            info = (f"reward {record['reward']:.3f} · searches "
                    f"{record.get('zerosearch/searches_per_question', 0):.2f} · noise "
                    f"{record.get('zerosearch/noise_prob') or 0:.2f}")
            update("train", step, total, info)

    try:
        with progress:
            final = run_training(cfg, resume=resume, log=lambda m: console.print(f"[dim]{m}[/]"),
                                 on_progress=on_progress)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]done:[/] final model in {final}; metrics in "
                  f"{cfg.training.output_dir}/metrics.jsonl")


eval_app = typer.Typer(help="Evaluate on the QA benchmarks; `eval compare` merges runs.",
                       no_args_is_help=False)
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
@with_engine_options()
def eval_run(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Policy model."),
    method: str = field_option(EvalConfig, "method", "--method"),
    datasets: str = field_option(EvalConfig, "datasets", "--datasets", "-d", default=",".join(BENCHMARKS),
                                 help="Comma-separated dataset names (folders of --data-dir) or files."),
    data_dir: Optional[str] = field_option(EvalConfig, "data_dir", "--data-dir"),
    split: str = field_option(EvalConfig, "split", "--split"),
    limit: Optional[int] = field_option(EvalConfig, "limit", "--limit"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o",
                                             help="Where predictions and results go."),
    batch_size: int = field_option(EvalConfig, "batch_size", "--batch-size"),
    pool_datasets: bool = field_option(EvalConfig, "pool_datasets", "--pool-datasets/--per-dataset"),
    max_turns: int = field_option(RolloutConfig, "max_turns", "--max-turns"),
    max_turn_tokens: int = field_option(RolloutConfig, "max_turn_tokens", "--max-turn-tokens"),
    policy_temperature: float = typer.Option(EvalConfig().rollout.temperature, "--temperature",
                                             "--policy-temperature",
                                             help="Policy sampling temperature (0 = greedy)."),
    eval_seed: int = field_option(EvalConfig, "seed", "--seed", "--eval-seed"),
    label: Optional[str] = field_option(EvalConfig, "label", "--label"),
    policy_device: str = field_option(EvalConfig, "device", "--device", "--policy-device"),
    policy_url: Optional[list[str]] = typer.Option(
        None, "--policy-url", help="OpenAI-compatible completions endpoint serving the policy "
        "(vLLM, SGLang; repeatable); --model then names its tokenizer."),
    policy_served_model: Optional[str] = typer.Option(
        None, "--policy-served-model", help="Model name at --policy-url (default: its /v1/models)."),
    doc_format: str = typer.Option(RolloutConfig.doc_format, "--doc-format", help=_DOC_FORMAT_HELP),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=_POLICY_CONFIG_HELP),
    engine_cfg: EngineConfig = None,
):
    """Evaluate a policy: EM / cover-EM / F1 / ROUGE-L per dataset, resumable."""
    if ctx.invoked_subcommand:
        return

    from zerosearch.evaluate import evaluate, resolve_dataset
    from zerosearch.generation.endpoint import load_policy_anywhere

    if not model or not output_dir:
        fail(ValueError("zerosearch eval needs --model and --output-dir"))
    try:
        cfg = EvalConfig(model=model, method=method, datasets=[d for d in datasets.split(",") if d],
                         data_dir=data_dir, split=split, limit=limit, batch_size=batch_size,
                         pool_datasets=pool_datasets,
                         seed=eval_seed, label=label, device=policy_device,
                         rollout=_rollout_budget(ctx, config, engine_cfg))
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be at least 1 (or left out for every question), got {limit}")
        for name in cfg.datasets:
            resolve_dataset(name, cfg.data_dir, cfg.split)
        engine = _build(engine_cfg) if method in ("search", "rag") else None
        generator, tokenizer = load_policy_anywhere(model, policy_device, policy_url or [],
                                                    policy_served_model)
    except USER_ERRORS as err:
        fail(err)
    progress, on_progress = named_progress(10)
    try:
        with progress:
            evaluate(cfg, generator, tokenizer, engine, output_dir, on_progress)
    except USER_ERRORS as err:
        fail(err)
    finally:
        if engine is not None:
            engine.close()
    out.print((Path(output_dir) / "table.md").read_text())
    console.print(f"[green]wrote[/] {output_dir}/results.json, table.md, chart.png, predictions/")


@eval_app.command("compare")
def eval_compare(
    runs: list[str] = typer.Argument(..., help="Eval output folders."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o",
                                             help="Write the merged table.md and chart.png here."),
    gap: bool = typer.Option(False, "--gap", help="Two runs of one policy, simulated engine first, "
                             "real engine second: the EM gap and answer agreement (gap.json, gap.md)."),
):
    """Merge several eval runs into one paper-style table (or, with --gap, the sim-to-real gap)."""
    from zerosearch.evaluate import compare

    try:
        if gap:
            from zerosearch.eval_gap import gap_table, sim_real_gap

            if len(runs) != 2:
                raise ValueError(f"--gap takes two runs (simulated, real), got {len(runs)}")
            result = sim_real_gap(*runs)
            table = gap_table(result)
            if output_dir:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                (Path(output_dir) / "gap.json").write_text(json.dumps(result, indent=2))
                (Path(output_dir) / "gap.md").write_text(table)
            out.print(table)
            return
        out.print(compare(runs, output_dir))
    except USER_ERRORS as err:
        fail(err)


@app.command()
@with_engine_options()
def ask(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="The question."),
    model: str = typer.Option("embedded:smollm2-135m-instruct", "--model", "-m", help="Policy model."),
    max_turns: int = field_option(RolloutConfig, "max_turns", "--max-turns"),
    max_turn_tokens: int = field_option(RolloutConfig, "max_turn_tokens", "--max-turn-tokens"),
    policy_temperature: float = typer.Option(EvalConfig().rollout.temperature, "--temperature",
                                             "--policy-temperature",
                                             help="Policy sampling temperature (0 = greedy)."),
    policy_device: str = typer.Option("auto", "--device", "--policy-device", help="cpu, cuda or auto."),
    policy_url: Optional[list[str]] = typer.Option(
        None, "--policy-url", help="OpenAI-compatible completions endpoint serving the policy "
        "(vLLM, SGLang; repeatable); --model then names its tokenizer."),
    policy_served_model: Optional[str] = typer.Option(
        None, "--policy-served-model", help="Model name at --policy-url (default: its /v1/models)."),
    doc_format: str = typer.Option(RolloutConfig.doc_format, "--doc-format", help=_DOC_FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the whole trajectory as JSON."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=_POLICY_CONFIG_HELP),
    engine_cfg: EngineConfig = None,
):
    """Ask the search agent one question and watch it think, search and answer."""
    from zerosearch.generation.endpoint import load_policy_anywhere
    from zerosearch.rollout import Row, run_rollouts

    try:
        rollout = _rollout_budget(ctx, config, engine_cfg)
        engine = _build(engine_cfg)
        with console.status("loading the policy…"):
            generator, tokenizer = load_policy_anywhere(model, policy_device, policy_url or [],
                                                        policy_served_model)
    except USER_ERRORS as err:
        fail(err)
    styles = {"generation": "white", "search": "cyan", "information": "dim", "answer": "bold green",
              "invalid": "yellow", "search_refused": "yellow"}

    def show(_: int, event: dict) -> None:
        if as_json:
            return
        kind = event["type"]
        if kind == "search":
            docs = "\n".join(f"  Doc {i}: {d[:200]}" for i, d in enumerate(event["documents"], 1))
            mode = f" ({event['mode']})" if event.get("mode") else ""
            text = f"search{mode}: {event['query']}\n{docs}" + (f"\n  error: {event['error']}"
                                                                if event.get("error") else "")
        elif kind == "information":
            return  # shown with its search
        else:
            text = event.get("text") or event.get("query", "")
        out.print(f"[{styles.get(kind, 'white')}]▸ {kind}[/] {text}", highlight=False)

    try:
        [traj] = run_rollouts([Row(question, [])], generator, tokenizer, engine, rollout,
                              on_event=show, eos_token_ids=[tokenizer.eos_token_id])
    finally:
        engine.close()
    if as_json:
        out.print_json(json.dumps({"question": question, "answer": traj.answer, **traj.stats(),
                                   "trace": list(traj.trace)}))
    else:
        out.print(f"[bold]answer:[/] {traj.answer if traj.answer is not None else '(none)'}")


sim_app = typer.Typer(help="Simulation tuning: collect, label, build, train, fidelity.",
                      no_args_is_help=True)
app.add_typer(sim_app, name="sim")


def _judge_backend(judge_model: Optional[str], judge_url: Optional[str]):
    if judge_url:
        from zerosearch.llm.openai_backend import OpenAIBackend

        return OpenAIBackend([judge_url], model=judge_model)
    if judge_model:
        from zerosearch.llm.transformers_backend import TransformersBackend

        return TransformersBackend(judge_model)
    return None


def _progress_bar(title: str):
    progress, update = named_progress(len(title))
    return progress, lambda done, total: update(title, done, total)


@sim_app.command("collect")
@with_engine_options()
def sim_collect(
    output: str = typer.Option("runs/sim/collected.jsonl", "--output", "-o", help="JSONL to append to."),
    train_data: str = typer.Option(..., "--train-data",
                                   help="QA questions."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N questions."),
    policy: str = typer.Option("embedded:smollm2-135m-instruct", "--policy", help="Collecting policy."),
    query_source: str = field_option(CollectConfig, "query_source", "--query-source"),
    max_turns: int = typer.Option(CollectConfig().rollout.max_turns, "--max-turns",
                                  help="Policy searches per question."),
    batch_size: int = field_option(CollectConfig, "batch_size", "--batch-size"),
    partial_queries: int = field_option(CollectConfig, "partial_queries", "--partial-queries"),
    partial_seed: int = field_option(CollectConfig, "seed", "--partial-seed"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=_ENGINE_CONFIG_HELP),
    engine_cfg: EngineConfig = None,
):
    """Run a policy against a real engine and record every (query, documents) pair. Resumable."""
    from dataclasses import replace

    from zerosearch.qa import load_qa
    from zerosearch.sim.collect import collect

    try:
        if engine_cfg.kind == "simulated":
            raise ValueError("collect from a real engine: --engine bm25, dense, web or remote")
        rows = load_qa(train_data, limit=limit)
        cfg = CollectConfig(query_source=query_source, batch_size=batch_size,
                            rollout=replace(CollectConfig().rollout, max_turns=max_turns,
                                            topk=engine_cfg.topk),
                            partial_queries=partial_queries, seed=partial_seed)
        engine = _build(engine_cfg)
        generator = tokenizer = None
        if query_source == "policy":
            from zerosearch.generation.hf import load_policy

            generator, tokenizer = load_policy(policy)
        progress, update = _progress_bar("collect")
        with progress:
            counts = collect(rows, engine, output, cfg, generator, tokenizer, update)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]{output}[/]: {counts['questions']} questions, {counts['queries']} queries "
                  f"({counts['questions_with_queries']} questions issued at least one)")


@sim_app.command("label")
def sim_label(
    collected: str = typer.Option("runs/sim/collected.jsonl", "--collected", help="From sim collect."),
    output: str = typer.Option("runs/sim/labelled.jsonl", "--output", "-o", help="Labelled pairs."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model",
                                              help="LLM judge (in process, or the name at --judge-url)."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible judge endpoint."),
    outcome_threshold: float = typer.Option(0.5, "--outcome-threshold", help="F1 counted as correct."),
):
    """Label pairs useful/noisy by judge, outcome and contains; report agreement."""
    from zerosearch.sim.label import label

    try:
        judge = _judge_backend(judge_model, judge_url)
        progress, update = _progress_bar("label")
        with progress:
            report = label(collected, output, judge, outcome_threshold, progress=update)
    except USER_ERRORS as err:
        fail(err)
    out.print_json(json.dumps(report))


@sim_app.command("build")
def sim_build(
    labelled: str = typer.Option("runs/sim/labelled.jsonl", "--labelled", help="From sim label."),
    output_dir: str = typer.Option("runs/sim/sft", "--output-dir", "-o", help="train/val JSONL folder."),
    label_by: str = typer.Option("contains", "--label-by", help="judge, outcome or contains."),
    max_docs: int = typer.Option(5, "--max-docs", help="Documents per example (top-k, up to 20)."),
    max_doc_words: int = typer.Option(40, "--max-doc-words", help="Words kept per document."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Questions held out."),
    seed: int = typer.Option(0, "--seed", help="Balancing and split seed."),
    answer_first: bool = typer.Option(False, "--answer-first/--engine-order",
                                      help="Useful examples: documents holding the answer first."),
    answer_lead: Optional[int] = typer.Option(None, "--answer-lead", min=0,
                                              help="Words a clipped document keeps before the "
                                                   "answer (default: a third of --max-doc-words)."),
    paired: bool = typer.Option(False, "--paired/--one-per-query",
                                help="Each query gives a useful and a noisy example where its documents "
                                     "allow (collect deeper than --max-docs); needs --label-by contains."),
):
    """Build a balanced useful/noisy SFT set in chat format with the released simulators' prompt."""
    from zerosearch.sim.build import build

    try:
        stats = build(labelled, output_dir, label_by, max_docs, max_doc_words, val_fraction, seed,
                      answer_first=answer_first, answer_lead=answer_lead, paired=paired)
    except USER_ERRORS as err:
        fail(err)
    out.print_json(json.dumps(stats))


@sim_app.command("train")
def sim_train(
    data: str = field_option(SimTrainConfig, "data", "--data"),
    model: str = field_option(SimTrainConfig, "model", "--model", "-m"),
    output_dir: str = field_option(SimTrainConfig, "output_dir", "--output-dir", "-o"),
    epochs: float = field_option(SimTrainConfig, "epochs", "--epochs"),
    max_steps: int = field_option(SimTrainConfig, "max_steps", "--max-steps"),
    learning_rate: float = field_option(SimTrainConfig, "learning_rate", "--learning-rate"),
    batch_size: int = field_option(SimTrainConfig, "batch_size", "--batch-size"),
    lora: bool = field_option(SimTrainConfig, "lora", "--lora"),
    bf16: Optional[bool] = field_option(SimTrainConfig, "bf16", "--bf16/--fp32"),
    save_steps: int = field_option(SimTrainConfig, "save_steps", "--save-steps"),
    resume: bool = field_option(SimTrainConfig, "resume", "--resume"),
    answer_weight: float = field_option(SimTrainConfig, "answer_weight", "--answer-weight"),
    noisy_unlikelihood: float = field_option(SimTrainConfig, "noisy_unlikelihood", "--noisy-unlikelihood"),
    noisy_contrast: bool = field_option(SimTrainConfig, "noisy_contrast",
                                        "--noisy-contrast/--no-noisy-contrast"),
    cpu_tuning: bool = field_option(SimTrainConfig, "cpu_tuning", "--cpu-tuning/--no-cpu-tuning"),
):
    """Fine-tune the simulation LLM (completion-only loss); saves a servable checkpoint."""
    from zerosearch.sim.tune import train_simulator

    try:
        final = train_simulator(SimTrainConfig(model=model, data=data, output_dir=output_dir,
                                               epochs=epochs, max_steps=max_steps,
                                               learning_rate=learning_rate, batch_size=batch_size,
                                               lora=lora, bf16=bf16, save_steps=save_steps,
                                               resume=resume, answer_weight=answer_weight,
                                               noisy_unlikelihood=noisy_unlikelihood,
                                               noisy_contrast=noisy_contrast,
                                               cpu_tuning=cpu_tuning), log=lambda m: console.print(m))
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]serve it:[/] zerosearch serve --engine simulated --model {final}")


@sim_app.command("fidelity")
@with_engine_options(no_policy=True)
def sim_fidelity(
    simulator: list[str] = typer.Option(..., "--simulator",
                                        help="STYLE@MODEL, e.g. finetuned@runs/sim/simulator/final or "
                                             "prompt@embedded:smollm2-135m-instruct (repeatable); "
                                             "STYLE+guard@MODEL turns on the noisy guard."),
    held_out: str = typer.Option("runs/sim/sft/val.jsonl", "--held-out", help="Held-out queries."),
    reference_engine: Optional[str] = typer.Option(None, "--reference-engine",
                                                   help="bm25 or dense: fetch the real documents "
                                                        "(with --corpus); default: those recorded."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N held-out queries."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="LLM judge."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="Judge endpoint."),
    output_dir: str = typer.Option("runs/sim/fidelity", "--output-dir", "-o", help="Report folder."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=_ENGINE_CONFIG_HELP),
    engine_cfg: EngineConfig = None,
):
    """Measure simulators against the real engine: format, controllability, overlap, cost."""
    from dataclasses import replace

    from zerosearch.sim.fidelity import (held_out_queries, measure, query_groups, real_engine_row,
                                         reference_documents, write_report)

    try:
        queries = held_out_queries(held_out, limit)
        if not queries:
            raise ValueError(f"no held-out queries in {held_out}")
        for spec in simulator:
            style, sep, model = spec.partition("@")
            style, plus, guard = style.partition("+")
            if not sep or style not in ("finetuned", "prompt") or (plus and guard != "guard"):
                raise ValueError(f"--simulator {spec!r}: expected STYLE@MODEL or STYLE+guard@MODEL "
                                 "with STYLE finetuned or prompt")
        ref_engine = None
        if reference_engine:
            ref_engine = _build(replace(engine_cfg, kind=reference_engine))
        judge = _judge_backend(judge_model, judge_url)
        rows = []
        progress, update = named_progress(40)
        with progress:
            for suffix, group in query_groups(queries):  # the questions, then stubs of them (if any)
                reference = reference_documents(group, ref_engine, engine_cfg.topk)
                rows.append(real_engine_row(group, reference))
                rows[-1]["simulator"] += suffix
                for spec in simulator:
                    style, _, model = spec.partition("@")
                    style, plus, _ = style.partition("+")
                    engine = _build(replace(engine_cfg, kind="simulated", model=model, style=style,
                                            noisy_guard=bool(plus) or engine_cfg.noisy_guard))
                    try:
                        # calls as full as the simulator's batch (the quickstart's fidelity stage too)
                        rows.append(measure(spec + suffix, engine, group, engine_cfg.topk, reference, judge,
                                            batch_size=engine_cfg.max_batch_size, progress=update))
                    finally:
                        engine.close()
    except USER_ERRORS as err:
        fail(err)
    out.print(write_report(rows, output_dir))
    console.print(f"[green]wrote[/] {output_dir}/fidelity.md, fidelity.json, fidelity.png")
    failed = {r["simulator"]: r["errors"] for r in rows if r.get("errors")}
    if failed:  # a failed output counts as malformed and answer-free: the numbers are not a measurement
        console.print(f"[red]error:[/] simulator outputs failed (engine errors, not bad text): {failed}; "
                      "see fidelity.json")
        raise typer.Exit(1)

data_app = typer.Typer(help="Datasets: the fictional mini-world.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("miniworld")
def data_miniworld(
    out_dir: str = typer.Option("runs/miniworld", "--out", "-o", help="Folder for corpus/train/test JSONL."),
    seed: int = typer.Option(0, "--seed", help="Same seed and sizes = byte-identical files."),
    people: int = typer.Option(160, "--people", help="People in the world."),
    works: int = typer.Option(120, "--works", help="Works (novels, paintings…)."),
    organisations: int = typer.Option(40, "--organisations", help="Organisations."),
    cities: int = typer.Option(30, "--cities", help="Cities."),
    countries: int = typer.Option(6, "--countries", help="Countries."),
    multi_hop: bool = typer.Option(True, "--multi-hop/--single-hop", help="Also 2-3 hop questions."),
):
    """Generate a fictional knowledge base (FlashRAG corpus) with train/test questions."""
    from zerosearch.miniworld import MiniWorldConfig, write_world

    try:
        counts = write_world(out_dir, MiniWorldConfig(
            seed=seed, people=people, works=works, organisations=organisations, cities=cities,
            countries=countries, multi_hop=multi_hop))
    except USER_ERRORS as err:
        fail(err)
    console.print(f"[green]{out_dir}[/]: {counts['passages']} passages, {counts['train']} train and "
                  f"{counts['test']} test questions")
    console.print(f"try: zerosearch search 'Who founded …' --engine bm25 --corpus {out_dir}/corpus.jsonl")


@app.command()
def quickstart(
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Run folder (rerun = resume)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML QuickstartConfig."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy model."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Format warm-up steps (0 = none)."),
    rl_steps: Optional[int] = typer.Option(None, "--rl-steps", help="RL optimizer steps."),
    start_from: Optional[str] = typer.Option(
        None, "--start-from", help="A finished quickstart folder whose world, simulator, warm-up and "
        "baselines this run reuses: only RL and its evaluation run (compare RL settings or seeds)."),
):
    """The whole pipeline on the CPU: mini-world, simulator tuning, RL, evaluation, report."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # library deprecation notices and the CPU's pin_memory notice would bury the progress bars
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    from zerosearch.config import from_dict, load_yaml
    from zerosearch.quickstart import QuickstartConfig, run

    try:
        cfg = from_dict(QuickstartConfig, load_yaml(config) if config else {})
        if output_dir:
            cfg.output_dir = output_dir
        if policy:
            cfg.policy = policy
        if warmup_steps is not None:
            cfg.warmup.steps = warmup_steps
        if rl_steps is not None:
            cfg.rl.training.max_steps = rl_steps
        if start_from:
            cfg.start_from = start_from
    except USER_ERRORS as err:
        fail(err)
    progress, update = named_progress()
    try:
        with progress:
            report = run(cfg, update, log=lambda m: console.print(f"[dim]{m}[/]"))
    except USER_ERRORS as err:
        fail(err)
    out.print(Path(report).read_text().split("## Example trace")[0], markup=False, highlight=False)
    console.print(f"[green]report:[/] {report}")


if __name__ == "__main__":
    app()
