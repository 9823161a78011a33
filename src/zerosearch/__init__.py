"""zerosearch: train LLMs to search with RL while a simulation LLM plays the search engine.

The public API (``docs/api.md``); names load on first use, so ``import zerosearch`` stays cheap::

    from zerosearch import make_engine, search, rollouts, evaluate_model, load_simulator
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # engines
    "EngineConfig": "zerosearch.engines.factory", "make_engine": "zerosearch.api",
    "load_simulator": "zerosearch.api", "search": "zerosearch.api",
    "SearchRequest": "zerosearch.engines.base", "SearchResult": "zerosearch.engines.base",
    "Document": "zerosearch.engines.base",
    # rollouts
    "RolloutConfig": "zerosearch.rollout", "Row": "zerosearch.rollout",
    "Trajectory": "zerosearch.rollout", "rollouts": "zerosearch.api", "load_model": "zerosearch.api",
    "CurriculumConfig": "zerosearch.curriculum",
    # evaluation
    "EvalConfig": "zerosearch.evaluate", "evaluate_model": "zerosearch.api",
    "BENCHMARKS": "zerosearch.evaluate", "sim_real_gap": "zerosearch.eval_gap",
    # TRL integrations
    "SearchEnvironmentFactory": "zerosearch.integrations.trl_env",
    "tool_dataset": "zerosearch.integrations.trl_env",
    "tool_answer_reward": "zerosearch.integrations.trl_env",
    "search_rollout_func": "zerosearch.integrations.trl_rollout",
    "answer_reward": "zerosearch.integrations.trl_rollout",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'zerosearch' has no attribute {name!r}; the public names are "
                             f"{', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
