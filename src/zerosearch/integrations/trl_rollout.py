"""Our multi-turn search rollout as a ``rollout_func`` for a vanilla TRL ``GRPOTrainer``.

TRL 1.16 calls ``rollout_func(prompts, trainer)`` with the batch's prompts (already repeated
``num_generations`` times) and expects ``prompt_ids``, ``completion_ids``, ``logprobs`` and
optionally ``env_mask`` (0 = inserted by the environment: TRL multiplies it into the loss mask);
other keys reach the reward functions as keyword arguments. :func:`search_rollout_func` runs
:func:`zerosearch.rollout.run_rollouts` with the trainer's live model, so a plain TRL script trains
the Search-R1 ``<search>``/``<answer>`` protocol against any zerosearch engine, the curriculum read
from the trainer's step. TRL hands over only the prompts, so the gold answers (which a simulated
engine conditions on) come from ``answers``, a mapping from question to gold answers.

:class:`~zerosearch.train.trainer.ZeroSearchTrainer` uses the same two helpers below.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from zerosearch.curriculum import CurriculumConfig
from zerosearch.engines.base import Engine
from zerosearch.rollout import RolloutConfig, RolloutTimings, Row, Trajectory, run_rollouts


def trainer_rollouts(trainer, rows: Sequence[Row], engine: Engine | None, cfg: RolloutConfig, *,
                     noise_prob: float | None, seed: int, make_generator: Callable | None = None,
                     generation_batch_size: int = 64, timings: RolloutTimings | None = None
                     ) -> list[Trajectory]:
    """Rollouts of ``rows`` with ``trainer``'s live policy (unwrapped for generation).

    ``make_generator(model)`` builds the generator (default: :class:`~zerosearch.generation.hf.HFGenerator`).
    """
    from trl.models.utils import unwrap_model_for_generation

    tok = trainer.processing_class
    eos = {tok.eos_token_id} | set(getattr(trainer, "eos_token_ids", None) or [])
    if make_generator is None:
        from zerosearch.generation.hf import HFGenerator

        def make_generator(model):
            return HFGenerator(model, tok, generation_batch_size)
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as unwrapped:
        return run_rollouts(rows, make_generator(unwrapped), tok, engine, cfg, noise_prob=noise_prob,
                            rng=random.Random(seed), timings=timings,
                            eos_token_ids=sorted(i for i in eos if i is not None))


def trl_output(trajs: Sequence[Trajectory], tokenizer, mask_inserted: bool = True) -> dict[str, Any]:
    """What TRL expects back from a ``rollout_func``, plus ``zs_answer`` for the reward functions.
    ``mask_inserted=False`` keeps the inserted documents in the loss (the loss-masking ablation)."""
    for t in trajs:  # TRL cannot take an empty completion
        if not t.completion_ids:
            t.append([tokenizer.eos_token_id], 0)
    return {"prompt_ids": [t.prompt_ids for t in trajs],
            "completion_ids": [t.completion_ids for t in trajs],
            "logprobs": None,
            "env_mask": [t.env_mask if mask_inserted else [1] * len(t.completion_ids) for t in trajs],
            "zs_answer": [t.answer for t in trajs]}


def prompt_question(prompt: Any) -> str:
    """The question inside a TRL prompt: the text itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1].get("content", "")
        if isinstance(content, list):  # typed content blocks
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise ValueError(f"cannot read a question from prompt {prompt!r}: expected a string or a list "
                     "of chat messages")


def search_rollout_func(engine: Engine, rollout: RolloutConfig | None = None, *,
                        answers: Mapping[str, Sequence[str]] | None = None,
                        curriculum: CurriculumConfig | None = None, seed: int = 0,
                        generation_batch_size: int = 64) -> Callable[[list, Any], dict[str, Any]]:
    """A ``rollout_func`` for ``GRPOTrainer``: each prompt is a question (string or chat messages);
    the policy searches ``engine`` with ``<search>`` and answers with ``<answer>``.

    ``answers`` maps each training question to its gold answers (simulated engines need them; a
    question missing from it is an error when given). ``curriculum`` sets the noise probability
    from ``trainer.state.global_step`` / ``max_steps`` (simulated engines only). Pair it with
    :func:`answer_reward` as the reward function.
    """
    cfg = rollout or RolloutConfig()
    simulated = getattr(engine, "name", "") == "simulated"

    def rollout_func(prompts: list, trainer) -> dict[str, Any]:
        rows = []
        for prompt in prompts:
            question = prompt_question(prompt)
            golds: Sequence[str] = []
            if answers is not None:
                if question not in answers:
                    raise KeyError(f"question {question[:120]!r} is not in the answers mapping given "
                                   "to search_rollout_func")
                golds = answers[question]
            rows.append(Row(question, list(golds), question))
        state = trainer.state
        noise = (curriculum.at(state.global_step, state.max_steps)
                 if curriculum is not None and simulated else None)
        step_seed = (seed * 1_000_003 + state.global_step) * 1009 + trainer.accelerator.process_index
        trajs = trainer_rollouts(trainer, rows, engine, cfg, noise_prob=noise, seed=step_seed,
                                 generation_batch_size=generation_batch_size)
        return trl_output(trajs, trainer.processing_class)

    return rollout_func


def answer_reward(metric: str = "f1"):
    """A TRL reward function for :func:`search_rollout_func`: ``metric`` (f1, em, cover_em) of the
    rollout's extracted answer against the dataset's ``golden_answers`` column."""
    from zerosearch.train.trainer import make_reward_func

    return make_reward_func(metric)
