"""The Python API: each job of the CLI in a few lines, with the same dataclass configs.

``from zerosearch import ...`` re-exports these functions and the configs they take; everything
else in the package is internal and may move. See ``docs/api.md`` for runnable snippets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from zerosearch.engines.base import Engine, SearchRequest, SearchResult
from zerosearch.engines.factory import EngineConfig, build_engine
from zerosearch.rollout import RolloutConfig, Row, Trajectory, run_rollouts


def make_engine(config: EngineConfig | None = None, /, log=None, **fields: Any) -> Engine:
    """An engine from an :class:`EngineConfig`, or from its fields as keyword arguments
    (``make_engine(kind="bm25", corpus="wiki.jsonl")``). Close it with ``engine.close()``."""
    if config is not None and fields:
        raise TypeError("pass either an EngineConfig or its fields as keyword arguments, not both")
    cfg = config if config is not None else EngineConfig(**fields)
    return build_engine(cfg, log=log or (lambda message: None))


def load_simulator(model: str = EngineConfig.model, /, **fields: Any) -> Engine:
    """A simulated engine: ``model`` in process, or ``backend_urls=[...]`` for served ones; any other
    :class:`EngineConfig` field (``style``, ``temperature``, ``noisy_guard``…) as keywords."""
    return make_engine(kind="simulated", model=model, **fields)


def search(engine: Engine, queries: Sequence[str | SearchRequest], *, question: str = "",
           golden_answers: Sequence[str] = (), topk: int = 5, mode: str | None = None,
           noise_prob: float | None = None) -> list[SearchResult]:
    """Search a batch: strings become requests with the given context, requests pass as they are."""
    requests = [q if isinstance(q, SearchRequest) else SearchRequest(
        query=q, question=question, golden_answers=list(golden_answers), topk=topk, mode=mode,
        noise_prob=noise_prob, row_id=i) for i, q in enumerate(queries)]
    for i, request in enumerate(requests):
        try:
            request.validate()
        except ValueError as err:
            raise ValueError(f"query {i}: {err}") from None
    return engine.search(requests)


def load_model(model: Any, tokenizer=None, device: str = "auto", dtype: str = "auto"):
    """``(generator, tokenizer)`` for rollouts: a model name (``embedded:…``, hub id, local path)
    is loaded; a transformers model is wrapped as it is (pass its ``tokenizer``)."""
    if isinstance(model, (str, Path)):
        from zerosearch.generation.hf import load_policy

        return load_policy(str(model), device, dtype)
    if tokenizer is None:
        raise ValueError("pass the tokenizer with a model object: load_model(model, tokenizer)")
    from zerosearch.generation.hf import HFGenerator

    return HFGenerator(model, tokenizer), tokenizer


def _rows(questions: Sequence[str | Row], answers: Sequence[Sequence[str]] | None) -> list[Row]:
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answer lists for {len(questions)} questions")
    return [q if isinstance(q, Row) else Row(q, list(answers[i]) if answers else [], i)
            for i, q in enumerate(questions)]


def rollouts(model: Any, questions: Sequence[str | Row], engine: Engine | None = None,
             config: RolloutConfig | None = None, *, answers: Sequence[Sequence[str]] | None = None,
             tokenizer=None, noise_prob: float | None = None, device: str = "auto",
             **fields: Any) -> list[Trajectory]:
    """Multi-turn search rollouts of any HF causal LM against any engine (the code training uses).

    ``model``: a name or a transformers model (with ``tokenizer``), or a ``(generator, tokenizer)``
    pair from :func:`load_model` to reuse; ``config`` or its fields as keywords (``max_turns=2``);
    ``answers``: gold answers per question (simulated engines condition on them)."""
    if config is not None and fields:
        raise TypeError("pass either a RolloutConfig or its fields as keyword arguments, not both")
    cfg = config if config is not None else RolloutConfig(**fields)
    generator, tok = model if isinstance(model, tuple) else load_model(model, tokenizer, device)
    return run_rollouts(_rows(questions, answers), generator, tok, engine, cfg,
                        noise_prob=noise_prob, eos_token_ids=[tok.eos_token_id])


def evaluate_model(output_dir: str | Path, config: Any = None, engine: Engine | None = None,
                   **fields: Any) -> dict[str, Any]:
    """Evaluate a policy on the QA sets (default: the seven benchmarks under ``data_dir``) and write
    ``results.json``, ``table.md`` and predictions to ``output_dir`` (resumable); returns the report.

    ``config``: an :class:`~zerosearch.evaluate.EvalConfig`, or its fields as keywords
    (``model=…, datasets=["nq"], limit=50``); ``engine`` for the search and rag methods."""
    from zerosearch.evaluate import EvalConfig, evaluate

    if config is not None and fields:
        raise TypeError("pass either an EvalConfig or its fields as keyword arguments, not both")
    cfg = config if config is not None else EvalConfig(**fields)
    generator, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    return evaluate(cfg, generator, tok, engine, output_dir)
