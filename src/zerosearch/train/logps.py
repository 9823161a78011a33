"""Log-probabilities of a training batch's completion tokens, and the row packing behind them.

TRL lays a batch out as left-padded prompts then right-padded completions; a row then pays for the
longest prompt and the longest completion of its chunk. These helpers pack each row's real tokens
(:func:`compact_rows`), trim all-padding columns (:func:`trim_columns`), sort rows by length
(:func:`reorder_rows`) and compute per-token log-probs and entropies on the packed rows
(:func:`plain_token_logps`), which :class:`zerosearch.train.trainer.ZeroSearchTrainer` uses in
place of TRL's own forward.
"""

from __future__ import annotations

from typing import Any

import torch


def reorder_rows(batch: dict[str, Any], order: torch.Tensor) -> dict[str, Any]:
    """Apply one row order to every per-row entry (tensors with a batch dimension, lists)."""
    n = len(order)

    def apply(value):
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.size(0) == n:
            return value[order.to(value.device)]
        if isinstance(value, list) and len(value) == n:
            return [value[i] for i in order.tolist()]
        return value

    return {key: apply(value) for key, value in batch.items()}


def plain_token_logps(model, input_ids, attention_mask, logits_to_keep: int, temperature: float = 1.0,
                      compute_entropy: bool = False, entropy_grad: bool = True,
                      compile_layers: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (and entropies) of the last ``logits_to_keep`` columns.

    The rows run packed (:func:`compact_rows`): each row's real tokens side by side from column 0,
    so no row pays for another's prompt or completion padding. Columns that are padding get 0.
    Where the LM head is a plain projection (:func:`zerosearch.train.head_logps.head_supported`),
    only the positions of real completion tokens are projected, through one logits buffer reused
    by the backward pass (:class:`~zerosearch.train.head_logps.ChosenTokenLogProbs`); otherwise
    the model's own forward gives full logits.

    TRL's fused LM head tiles the vocabulary projection to save memory on GPUs with large
    vocabularies, but recomputes it in the backward pass, which costs more than it saves where
    memory is plentiful (``training.fused_lm_head`` picks one). ``entropy_grad=False`` computes the entropies
    outside autograd, for when they are only logged or used as a mask (no entropy bonus): the
    vocabulary-wide softmax then keeps nothing for a backward pass that never comes.
    ``compile_layers`` (``training.compile``) runs the decoder layers of that plain path compiled.
    """
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    from zerosearch.train.head_logps import chosen_token_logps, head_supported

    packed, packed_mask, source, real, first = compact_rows(input_ids, attention_mask, logits_to_keep)
    if head_supported(model):
        # only the positions that predict a real completion token go through the LM head
        rows, cols = real.nonzero(as_tuple=True)
        positions = torch.stack([rows, first + source[rows, cols]], dim=1)
        targets = input_ids[:, -logits_to_keep:][rows, cols]
        lp, ent = chosen_token_logps(model, packed, positions, targets, temperature,
                                     compute_entropy, entropy_grad, compile_layers)
        logps = lp.new_zeros(real.shape).index_put((rows, cols), lp)
        entropy = ent.new_zeros(real.shape).index_put((rows, cols), ent) if compute_entropy else None
        return logps, entropy
    logits = model(input_ids=packed, attention_mask=packed_mask, use_cache=False,
                   logits_to_keep=packed.size(1) - first).logits  # positions first .. width - 1
    targets = torch.nn.functional.pad(packed[:, first + 1:], (0, 1))  # each position's next token
    logps = selective_log_softmax(logits, targets, temperature=temperature)
    logps = logps.gather(1, source).masked_fill(~real, 0.0)
    entropy = None
    if compute_entropy:
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
            entropy = entropy_from_logits(logits / temperature).gather(1, source).masked_fill(~real, 0.0)
    return logps, entropy


def compact_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int):
    """Rows with their real tokens moved left, for a forward that pays for no padding inside a row.

    TRL lays a batch out as left-padded prompts then right-padded completions, so a row pays for the
    longest prompt and the longest completion of its chunk even when its own total is short; packed,
    a chunk costs its longest row. Positions become each row's own 0, 1, 2, ... (they were offset
    by the left padding; RoPE only sees relative positions). Returns ``(ids, mask, source, real,
    first)``: the packed ``(rows, width)`` ids and mask; for each of the last ``logits_to_keep``
    input columns, the packed position (minus ``first``) whose logits predict it, and whether the
    column is a real token with one before it (bool); ``first`` the earliest such position.
    """
    n, total = input_ids.shape
    real_all = attention_mask.bool()
    lengths = real_all.sum(1)
    width = max(int(lengths.max()), 1)
    packed_col = real_all.long().cumsum(1) - 1  # where each real token goes
    rows = torch.arange(n, device=input_ids.device)[:, None].expand(n, total)
    ids = input_ids.new_zeros((n, width))
    ids[rows[real_all], packed_col[real_all]] = input_ids[real_all]
    mask = (torch.arange(width, device=input_ids.device)[None] < lengths[:, None]).to(attention_mask.dtype)
    real = real_all[:, total - logits_to_keep:]
    source = packed_col[:, total - logits_to_keep:] - 1  # the token before predicts it
    real = real & (source >= 0)  # a row's very first token has nothing before it
    first = int(source[real].min()) if real.any() else width - 1
    source = (source - first).clamp(min=0, max=width - 1 - first) * real
    return ids, mask, source, real, first


def trim_columns(attention_mask: torch.Tensor, logits_to_keep: int) -> tuple[int, int, int]:
    """The column range of a chunk that holds any real token: (first, last, completion columns kept).

    TRL pads a whole generation batch to its longest prompt (left) and longest completion (right),
    so a chunk of shorter rows would pay for the longest row of the batch. Leading columns that are
    padding in every row go (RoPE sees only relative positions, so outputs do not change), and so do
    trailing ones; the completion part keeps at least one column.
    """
    total = attention_mask.size(1)
    used = (attention_mask.sum(0) > 0).nonzero()
    if not used.numel():
        return 0, total, logits_to_keep
    first = min(int(used[0]), total - logits_to_keep)
    last = max(int(used[-1]) + 1, total - logits_to_keep + 1)
    return first, last, logits_to_keep - (total - last)
