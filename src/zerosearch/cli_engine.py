"""The engine flags, defined once and attached to every command that searches.

``serve``, ``search`` (and the trainer and evaluator) take the same ``--engine``, ``--corpus``,
``--backend-url``… flags. Each maps one to one onto a field of
:class:`~zerosearch.engines.factory.EngineConfig`; a flag left unset keeps the value from
``--config`` (its ``engine:`` section) or the dataclass default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from zerosearch.config import from_dict, load_yaml
from zerosearch.engines.factory import ENGINE_KINDS, EngineConfig
from zerosearch.models import ModelNotFoundError

#: Mistakes a user can make (bad flag, missing file, unknown model): a message, no traceback.
USER_ERRORS = (ModelNotFoundError, FileNotFoundError, ValueError)
console = Console(stderr=True, soft_wrap=True)  # one-line errors, greppable when piped


def named_progress(width: int = 22):
    """(progress, update) for jobs with several named parts (datasets, stages, simulators): each new
    name gets its own bar; ``update(name, done, total, info="")`` moves it and, if given, sets the text
    beside it (a loss, a reward)."""
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn(f"[bold]{{task.description:<{width}}}[/]"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    tasks: dict[str, int] = {}

    def update(name: str, done: int, total: int, info: str = "") -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total, info="")
        progress.update(tasks[name], completed=done, total=total, **({"info": info} if info else {}))

    return progress, update


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (its first sentence or line), by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = " ".join(after.value.value.replace("``", "").split())
    return docs


def field_option(cls: type, name: str, *flags: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A typer option whose default and help come from field ``name`` of dataclass ``cls``, so the
    flag, the YAML key and the code share one default and one description (TRL's scripts build
    their flags from ``GRPOConfig`` the same way). ``default`` overrides the field's default."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default is dataclasses.MISSING:
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    kwargs.setdefault("help", field_docs(cls).get(name, ""))
    return typer.Option(default, *flags, **kwargs)


def fail(err: Exception) -> None:
    """Print a user mistake in one red line and exit with status 2."""
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)

_PANEL = "Search engine"

# flag name → (EngineConfig field, type, option names, help)
_FLAGS: list[tuple[str, str, Any, tuple[str, ...], str]] = [
    ("engine", "kind", Optional[str], ("--engine", "-e"), f"Engine: {', '.join(ENGINE_KINDS)}."),
    ("topk", "topk", Optional[int], ("--topk", "-k"), "Documents per search."),
    ("corpus", "corpus", Optional[str], ("--corpus",), "FlashRAG JSONL corpus (bm25, dense)."),
    ("index_path", "index_path", Optional[str], ("--index-path",),
     "Index folder (default: beside the corpus, or the cache)."),
    ("sim_model", "model", Optional[str], ("--sim-model",),
     "Simulation LLM (simulated) or encoder (dense): embedded:…, hub id or path."),
    ("sim_style", "style", Optional[str], ("--sim-style",),
     "Simulator prompt: finetuned (released simulators) or prompt (one-shot demo)."),
    ("sim_gold", "sim_gold", Optional[str], ("--sim-gold",),
     "Fine-tuned simulator: first gold answer (released simulators) or joined (up to three)."),
    ("backend_url", "backend_urls", Optional[list[str]], ("--backend-url",),
     "OpenAI-compatible endpoint of the simulation LLM; repeat to load-balance. Unset: in process."),
    ("backend_model", "backend_model", Optional[str], ("--backend-model",),
     "Model name to request from the endpoints (default: ask /v1/models)."),
    ("api_key", "api_key", Optional[str], ("--api-key",),
     "Bearer key for the endpoints or the remote server."),
    ("temperature", "temperature", Optional[float], ("--sim-temperature",), "Simulator temperature."),
    ("noisy_guard", "noisy_guard", Optional[bool], ("--noisy-guard/--no-noisy-guard",),
     "Simulator: noisy documents may not spell a gold answer (banned while decoding)."),
    ("max_new_tokens", "max_new_tokens", Optional[int], ("--max-new-tokens",),
     "Simulator output budget in tokens."),
    ("timeout", "timeout_s", Optional[float], ("--timeout",), "Per-attempt back-end timeout (s)."),
    ("max_retries", "max_retries", Optional[int], ("--max-retries",), "Bounded back-end retries."),
    ("deadline", "deadline_s", Optional[float], ("--deadline",),
     "Bound on all attempts of one back-end request (s)."),
    ("device", "device", Optional[str], ("--sim-device",),
     "Device of the in-process simulator or encoder (cpu, cuda)."),
    ("dtype", "dtype", Optional[str], ("--dtype",), "In-process dtype: auto, float32, bfloat16."),
    ("max_batch_size", "max_batch_size", Optional[int], ("--max-batch-size",),
     "In-process back end: most requests generated together."),
    ("seed", "seed", Optional[int], ("--sim-seed",), "Seed of the engine's useful/noisy draws and sampling."),
    ("web_api_key", "web_api_key", Optional[str], ("--web-api-key",),
     "SerpAPI key (or $SERPAPI_API_KEY)."),
    ("web_url", "web_url", Optional[str], ("--web-url",), "SerpAPI-compatible endpoint."),
    ("remote_url", "remote_url", Optional[str], ("--remote-url",),
     "URL of another zerosearch server (remote engine)."),
    ("real", "real", Optional[str], ("--real",),
     "Hybrid: the real engine behind the cache (bm25, dense, web, remote)."),
    ("cache_path", "cache_path", Optional[str], ("--cache-path",),
     "Hybrid: SQLite file of cached results and spend (default: the cache folder)."),
    ("cache_ttl", "cache_ttl_s", Optional[float], ("--cache-ttl",),
     "Hybrid: search again when a cached result is older than this (s)."),
    ("budget_calls", "budget_calls", Optional[int], ("--budget-calls",),
     "Hybrid: most real queries ever sent (kept across restarts)."),
    ("budget_dollars", "budget_dollars", Optional[float], ("--budget-dollars",),
     "Hybrid: most dollars ever spent on real queries (needs --price-per-1k)."),
    ("price_per_1k", "price_per_1k", Optional[float], ("--price-per-1k",),
     "Hybrid: the real engine's price per 1,000 queries ($)."),
    ("fallback", "fallback", Optional[str], ("--fallback",),
     "Hybrid: past the budget, simulated (default) or none (an error)."),
]


def engine_config(config_path: str | None, flags: dict[str, Any]) -> EngineConfig:
    """The ``engine:`` section of ``config_path`` (if any) overridden by the flags that were set."""
    section: dict[str, Any] = {}
    if config_path:
        section = dict(load_yaml(config_path).get("engine") or {})
    for flag, field_name, *_ in _FLAGS:
        if flags.get(flag) is not None:
            section[field_name] = flags[flag]
    return from_dict(EngineConfig, section, "engine")


def section_config(ctx: typer.Context, config_path: str | None, section: str, cls: type,
                   flags: dict[str, str], ignore: tuple[str, ...] = (), **fixed: Any) -> Any:
    """Dataclass ``cls`` from the ``section:`` of the ``--config`` YAML, overlaid by the flags the
    user gave (on the command line or through the environment).

    Every command's ``--config`` is one kind of file: a YAML whose sections the command reads (a
    train preset works everywhere). A flag left out keeps the section's value, else its own default
    (the field's). ``flags`` maps field name to the command's parameter name; ``ignore`` lists keys of
    the section this command does not take (eval takes the training rollout's budget, never its
    sampling temperature); ``fixed`` fields are set by the command itself.
    """
    values: dict[str, Any] = {}
    if config_path:
        values = {k: v for k, v in dict(load_yaml(config_path).get(section) or {}).items()
                  if k not in ignore}
    given = ("COMMANDLINE", "ENVIRONMENT")  # by name: typer vendors its own click
    for field_name, param in flags.items():
        source = ctx.get_parameter_source(param)
        if field_name not in values or getattr(source, "name", None) in given:
            values[field_name] = ctx.params[param]
    values.update(fixed)
    return from_dict(cls, values, section)


# Short names of simulator flags, for commands that run no policy (serve, search, sim fidelity):
# there ``--model`` or ``--temperature`` cannot be mistaken for the policy's.
_NO_POLICY_ALIASES = {"sim_model": ("--model", "-m"), "temperature": ("--temperature",),
                      "device": ("--device",), "seed": ("--seed",)}


def with_engine_options(no_policy: bool = False) -> Callable:
    """Add the engine flags to a typer command; it receives ``engine_cfg: EngineConfig``.

    The simulator's flags are ``--sim-*`` so that a command with a policy (train, eval, ask) keeps
    the plain ``--model``, ``--temperature``, ``--device`` and ``--seed`` for the policy;
    ``no_policy`` also accepts the plain names for the simulator (:data:`_NO_POLICY_ALIASES`).
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name != "engine_cfg"]
        extra = []
        for flag, _, annotation, names, help_text in _FLAGS:
            if no_policy:
                names = names + _NO_POLICY_ALIASES.get(flag, ())
            extra.append(inspect.Parameter(
                flag, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                default=typer.Option(None, *names, help=help_text, rich_help_panel=_PANEL)))

        @functools.wraps(fn)
        def wrapper(**kwargs):
            flags = {name: kwargs.pop(name) for name, *_ in _FLAGS}
            try:
                kwargs["engine_cfg"] = engine_config(kwargs.get("config"), flags)
            except USER_ERRORS as err:
                fail(err)
            return fn(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + extra)
        return wrapper

    return decorate
