"""Policy generation back ends for :mod:`zerosearch.rollout`.

``HFGenerator`` continues a batch of token contexts until the stop strings ``</search>`` /
``</answer>`` or EOS, on the CPU or one GPU. For plain full-attention decoders it runs
:class:`zerosearch.generation.kv.KVDecoder` (in-place KV cache, stopped rows leave the batch, each turn
reuses the previous turn's cache); other models go through transformers ``generate`` (left-padded,
KV cache). During training it wraps the trainer's live model, so rollouts always come from the
current policy; ``reset`` drops the kept caches (``run_rollouts`` calls it at both ends).
"""

from __future__ import annotations

from typing import Sequence

import torch

from zerosearch.generation.kv import KVDecoder, supports
from zerosearch.protocol import STOP_STRINGS
from zerosearch.rollout import Generation


class HFGenerator:
    """Batched generation with the search protocol's stop strings (``KVDecoder`` or ``generate``)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 64, fast: bool | None = None):
        """``fast``: use ``KVDecoder`` (None = wherever the model supports it)."""
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if fast is None:
            fast = supports(model)
        elif fast and not supports(model):
            raise ValueError(f"{type(model).__name__} has layers KVDecoder cannot cache (sliding "
                             "window, linear attention…); use fast=False")
        self.decoder = (KVDecoder(model, tokenizer, STOP_STRINGS, max_rows=max_batch_size)
                        if fast else None)

    def reset(self) -> None:
        """Drop the caches kept for the next turn (call when the rollouts end or weights change)."""
        if self.decoder is not None:
            self.decoder.reset()

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
            top_p=top_p if sample else None,
            top_k=0 if sample else None,  # unset would mean transformers' default top-k 50
            stop_strings=list(STOP_STRINGS), tokenizer=self.tokenizer, pad_token_id=self.pad_id)
        return [Generation(ids=row.tolist()) for row in out[:, width:].cpu()]

    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float) -> list[Generation]:
        if not contexts:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            if self.decoder is not None:
                return [Generation(ids=ids) for ids in self.decoder.generate(
                    contexts, max_new_tokens, temperature, top_p)]
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


def generation_copy(model, dtype: torch.dtype, previous=None):
    """``model``'s current weights in ``dtype``, for rollouts in a cheaper dtype than training's.

    The first call makes the copy; later calls pass it back as ``previous`` and its tensors are
    overwritten in place (no new memory), so it always holds the weights of the latest step.
    """
    import copy

    if previous is None:
        previous = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
        # A trainer may have replaced the instance's forward with a wrapper (accelerate's output
        # conversion) that deepcopy keeps and that still runs the original fp32 module: the copy
        # must run its own class's forward on its own weights.
        previous.__dict__.pop("forward", None)
    else:
        with torch.no_grad():
            previous.load_state_dict(model.state_dict())  # casts to the copy's dtype
    return previous


def load_policy(model: str, device: str = "auto", dtype: str = "auto", max_batch_size: int = 64):
    """(HFGenerator, tokenizer) for a policy name (embedded:…, hub id or path), ready to generate."""
    from zerosearch.llm.transformers_backend import load_causal_lm

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, lm = load_causal_lm(model, device, dtype)
    return HFGenerator(lm, tokenizer, max_batch_size), tokenizer
