"""Policy generation back ends for :mod:`zerosearch.rollout`.

``HFGenerator`` runs transformers ``generate`` on a batch of token contexts (left-padded, KV cache,
stop strings ``</search>`` / ``</answer>`` plus EOS), on the CPU or one GPU. During training it wraps
the trainer's live model, so rollouts always come from the current policy.
"""

from __future__ import annotations

from typing import Sequence

import torch

from zerosearch.protocol import STOP_STRINGS
from zerosearch.rollout import Generation


class HFGenerator:
    """Batched ``model.generate`` with the search protocol's stop strings."""

    def __init__(self, model, tokenizer, max_batch_size: int = 64):
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.inference_mode()
    def _batch(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
               top_p: float) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every row's next token is at the end
            ids[i, width - len(c):] = torch.tensor(c)
            mask[i, width - len(c):] = 1
        sample = temperature > 0
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=sample, temperature=temperature if sample else None,
            top_p=top_p if sample else None, top_k=None, stop_strings=list(STOP_STRINGS),
            tokenizer=self.tokenizer, pad_token_id=self.pad_id)
        return [Generation(ids=row.tolist()) for row in out[:, width:].cpu()]

    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float) -> list[Generation]:
        if not contexts:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))  # less padding
            results: list[Generation | None] = [None] * len(contexts)
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start:start + self.max_batch_size]
                for i, gen in zip(chunk, self._batch([contexts[i] for i in chunk], max_new_tokens,
                                                     temperature, top_p)):
                    results[i] = gen
            return results  # type: ignore[return-value]
        finally:
            if was_training:
                self.model.train()


def load_policy(model: str, device: str = "auto", dtype: str = "auto", max_batch_size: int = 64):
    """(HFGenerator, tokenizer) for a policy name (embedded:…, hub id or path), ready to generate."""
    from zerosearch.llm.transformers_backend import load_causal_lm

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, lm = load_causal_lm(model, device, dtype)
    return HFGenerator(lm, tokenizer, max_batch_size), tokenizer
