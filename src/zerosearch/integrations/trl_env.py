"""A search environment for TRL's ``GRPOTrainer(environment_factory=...)`` (tool-calling models).

TRL 1.16 makes one environment per rollout from ``environment_factory``, calls its ``reset(**row)``
with the dataset row, and offers its public methods to the model as tools through the chat
template. When the model emits a tool call, TRL runs the method, appends the result as a ``tool``
message and keeps generating; the tool-result tokens get ``tool_mask`` 0, which TRL multiplies into
the loss mask, so only the model's own tokens are trained on.

:class:`SearchEnvironmentFactory` is that factory: its environments have one tool, ``search``,
backed by any zerosearch engine (simulated, BM25, dense, web, remote, hybrid). The factory is also
a ``TrainerCallback``: passed in ``callbacks``, it reads ``state.global_step`` / ``max_steps`` at
each step, so a simulated engine follows the noise curriculum. The reward comes from
:func:`tool_answer_reward` (the final ``<answer>`` against the row's ``golden_answers``).

The environment calls the engine once per tool call (TRL runs a sample's tool calls one by one):
give a simulated engine a served back end (``backend_urls``) or expect one generation per call.
"""

from __future__ import annotations

from typing import Any, Sequence

from transformers import TrainerCallback

from zerosearch.curriculum import CurriculumConfig
from zerosearch.engines.base import Engine, SearchRequest
from zerosearch.protocol import NO_DOCUMENTS, document_line, extract_answer, format_documents
from zerosearch.rewards import get_metric

TOOL_INSTRUCTION = (
    "Answer the given question. You can call the search tool whenever you lack some knowledge, as "
    "many times as you want. When you know the answer, give it inside <answer> and </answer> "
    "without detailed explanations, for example <answer> Beijing </answer>. Question: ")


def tool_prompt(question: str, instruction: str = TOOL_INSTRUCTION) -> list[dict[str, str]]:
    """The conversational ``prompt`` of one dataset row for the search environment."""
    return [{"role": "user", "content": instruction + question.strip()}]


def tool_dataset(rows: Sequence[Any], instruction: str = TOOL_INSTRUCTION):
    """A ``datasets.Dataset`` for the environment: ``prompt``, ``question``, ``golden_answers``, ``id``
    (rows are :class:`zerosearch.rollout.Row` or the QA loaders' rows)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": tool_prompt(r.question, instruction), "question": r.question,
                               "golden_answers": list(r.golden_answers), "id": str(r.id)}
                              for r in rows])


class SearchEnvironment:
    """One rollout's environment: the row it answers and a ``search`` tool (see the module docstring)."""

    def __init__(self, factory: "SearchEnvironmentFactory"):
        self._factory = factory
        self._row: dict[str, Any] = {}
        self.queries: list[str] = []
        self.failures = 0

    def reset(self, **row: Any) -> None:
        """Start a rollout for ``row`` (the dataset row: question, golden_answers, id…)."""
        self._row = row
        self.queries, self.failures = [], 0

    def search(self, query: str) -> str:
        """Search for documents about a query and return the top results.

        Args:
            query: The search query, a few keywords or a short question.

        Returns:
            The top documents, one per line, as "Doc i: (Title: ...) text".
        """
        f = self._factory
        if f.max_searches is not None and len(self.queries) >= f.max_searches:
            raise RuntimeError(f"no searches left (at most {f.max_searches} per question)")
        self.queries.append(query)
        request = SearchRequest(query=str(query), question=str(self._row.get("question", "")),
                                golden_answers=[str(a) for a in self._row.get("golden_answers") or []],
                                topk=f.topk, noise_prob=f.noise_probability(),
                                row_id=self._row.get("id"))
        request.validate()
        result = f.engine.search([request])[0]
        if result.error:  # TRL reports a raised tool error to the model and counts the failure
            self.failures += 1
            raise RuntimeError(f"search failed ({result.error_kind}): {result.error}")
        if not result.documents:
            return NO_DOCUMENTS
        return format_documents([document_line(d.title, d.text) for d in result.documents])


class SearchEnvironmentFactory(TrainerCallback):
    """``environment_factory`` for ``GRPOTrainer``, and the callback that feeds it the step."""

    def __init__(self, engine: Engine, topk: int = 5, curriculum: CurriculumConfig | None = None,
                 max_searches: int | None = 4):
        """``curriculum`` applies to simulated engines only (real engines get no noise);
        ``max_searches``: tool calls per rollout answered before the tool refuses (None = no cap)."""
        self.engine, self.topk, self.max_searches = engine, topk, max_searches
        self.curriculum = curriculum if curriculum is not None else CurriculumConfig()
        self.simulated = getattr(engine, "name", "") == "simulated"
        self.step: int | None = None
        self.max_steps: int | None = None

    def __call__(self) -> SearchEnvironment:
        return SearchEnvironment(self)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step, self.max_steps = state.global_step, state.max_steps

    def on_step_begin(self, args, state, control, **kwargs):
        self.step, self.max_steps = state.global_step, state.max_steps

    def noise_probability(self) -> float | None:
        """The curriculum's noise at the trainer's current step (None for real engines)."""
        if not self.simulated:
            return None
        if self.step is None:
            raise RuntimeError("the search environment does not know the training step: pass the "
                               "factory in GRPOTrainer(callbacks=[factory]) as well")
        return self.curriculum.at(self.step, self.max_steps)


def completion_text(completion: Any) -> str:
    """The model's own text in a TRL completion (a string, or the assistant messages' contents)."""
    if isinstance(completion, str):
        return completion
    return "\n".join(str(m.get("content") or "") for m in completion if m.get("role") == "assistant")


def tool_answer_reward(metric: str = "f1"):
    """A TRL reward function: ``metric`` (f1, em, cover_em) of the last ``<answer>`` the model wrote
    against the row's ``golden_answers``."""
    score = get_metric(metric)

    def reward(prompts, completions, golden_answers, **_: Any) -> list[float]:
        return [score(extract_answer(completion_text(c)), g)
                for c, g in zip(completions, golden_answers)]

    reward.__name__ = f"answer_{metric}"
    return reward
