"""Policy generation through TRL's vLLM integration (GPU only; ``training.use_vllm: true``).

TRL owns the vLLM engine (colocated, or ``trl vllm-serve`` in server mode) and syncs the policy's
weights into it each step; this adapter only asks it for continuations of our multi-turn contexts.
The stop strings come from the trainer's ``generation_kwargs`` (set by :mod:`zerosearch.train.run`).
In server mode vLLM gathers every process's prompts, so each process must call it the same number
of times: ``lockstep`` tells the rollout to run every turn, with no contexts if it has none left.

Not exercised by the CPU test suite (vLLM needs a GPU).
"""

from __future__ import annotations

from typing import Sequence

from zerosearch.rollout import Generation


class TRLVLLMGenerator:
    """Continuations from ``trainer.vllm_generation``."""

    lockstep = True

    def __init__(self, trainer):
        self.vllm = trainer.vllm_generation

    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float) -> list[Generation]:
        saved = (self.vllm.max_completion_length, self.vllm.temperature, self.vllm.top_p)
        self.vllm.max_completion_length = max_new_tokens
        self.vllm.temperature, self.vllm.top_p = max(temperature, 1e-5), top_p
        try:
            _, completion_ids, _, _ = self.vllm.generate(list(contexts), None, 1)
        finally:
            self.vllm.max_completion_length, self.vllm.temperature, self.vllm.top_p = saved
        return [Generation(list(ids)) for ids in completion_ids]
