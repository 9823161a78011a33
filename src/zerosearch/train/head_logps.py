"""Log-probabilities (and entropies) of chosen tokens straight from the last hidden states.

The policy loss needs, for each completion token, ``log softmax(h W^T / T)[token]`` and the
entropy of that distribution. Written with ordinary ops, every vocabulary-wide intermediate (the
scaled logits, the log-softmax, the softmax for the entropy, and in the backward pass the zeros a
``gather`` scatters into and the stacked per-row log-sum-exp gradients) is a fresh tensor of
positions x vocabulary floats, and on a CPU filling fresh memory (first-touch page faults) rather
than arithmetic dominates such passes. :class:`ChosenTokenLogProbs` keeps one logits buffer: the
forward reduces it row chunk by row chunk, and the backward turns that same buffer into the
logits' gradient in place, then runs the two matmuls of the LM head's backward.

Only positions that predict a real token go through the head (the caller picks them), so padding
and prompt positions cost no vocabulary projection at all.

With ``compile_layers`` the decoder layers run through ``torch.compile`` (inductor fuses the
norms, rotary embeddings, activations and residual adds of each layer, forward and backward) for
this forward only: compiled twins of the layers are swapped in for the call, so generation, saving
and every other use of the model see the plain modules.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

#: rows of the logits buffer reduced at a time (bounds the temporaries to chunk x vocabulary)
CHUNK = 256


class ChosenTokenLogProbs(torch.autograd.Function):
    """``(hidden [M, d], weight [V, d], targets [M], temperature, want_entropy, entropy_grad)`` ->
    ``(logp [M], entropy [M])`` (entropy zeros unless ``want_entropy``).

    Differentiable in the log-probs, and in the entropy when ``entropy_grad`` (an entropy bonus).
    The saved logits buffer is overwritten by the backward pass, so the graph can be walked
    backward once only (``retain_graph`` is refused with an error).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, want_entropy: bool,
                entropy_grad: bool):
        ctx.set_materialize_grads(False)  # unused outputs arrive as None
        logits = F.linear(hidden, weight)  # under autocast: its dtype; reduced in float32 below
        mm_dtype = logits.dtype
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        if temperature != 1.0:
            logits.div_(temperature)
        rows = logits.size(0)
        lse = logits.new_empty(rows)
        entropy = logits.new_zeros(rows)
        for start in range(0, rows, CHUNK):
            x = logits[start:start + CHUNK]
            lse[start:start + CHUNK] = torch.logsumexp(x, dim=-1)
            if want_entropy:
                p = (x - lse[start:start + CHUNK, None]).exp_()
                entropy[start:start + CHUNK] = lse[start:start + CHUNK] - p.mul_(x).sum(-1)
        logp = logits.gather(1, targets[:, None])[:, 0] - lse
        ctx.save_for_backward(hidden, weight, targets, entropy)
        ctx.logits, ctx.lse, ctx.temperature, ctx.mm_dtype = logits, lse, temperature, mm_dtype
        if not (want_entropy and entropy_grad):
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, entropy = ctx.saved_tensors
        logits = ctx.logits
        if logits is None:
            raise RuntimeError("ChosenTokenLogProbs: the backward pass reuses the logits buffer and "
                               "can run once only (retain_graph is not supported)")
        ctx.logits = None
        lse = ctx.lse
        rows = logits.size(0)
        g_lp = grad_logp if grad_logp is not None else logits.new_zeros(rows)
        for start in range(0, rows, CHUNK):
            x = logits[start:start + CHUNK].sub_(lse[start:start + CHUNK, None])  # log p
            g = g_lp[start:start + CHUNK, None]
            if grad_entropy is None:
                x.exp_().mul_(-g)  # d logp_t / dx_j = 1[j = t] - p_j
            else:  # dH / dx_j = -p_j (log p_j + H)
                p = x.exp()
                x.add_(entropy[start:start + CHUNK, None]).mul_(grad_entropy[start:start + CHUNK, None])
                x.add_(g).mul_(p).neg_()
        logits[torch.arange(rows, device=logits.device), targets] += g_lp
        if ctx.temperature != 1.0:
            logits.div_(ctx.temperature)
        grad = logits.to(ctx.mm_dtype)
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad @ weight.to(ctx.mm_dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.t() @ hidden.to(ctx.mm_dtype)).to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def head_supported(model) -> bool:
    """Whether the model's logits are a plain ``hidden @ W^T`` (no bias, soft-capping or scaling)
    and its decoder can be called directly: an unwrapped HF model or a PEFT model around one in a
    single process. Distributed runs keep the model's forward: DDP, FSDP and DeepSpeed ZeRO-3
    gather, shard or synchronise parameters in hooks around it, which reading the LM head's weight
    directly would bypass."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings")):
        return False
    head = base.get_output_embeddings()
    cfg = getattr(base, "config", None)
    scaled = any(getattr(cfg, key, None) not in (None, 1.0) for key in (
        "final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"))
    return (type(head) is torch.nn.Linear and head.bias is None and not scaled
            and base.get_decoder() is not None)


_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.ModuleList]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def compiled_layers(decoder: torch.nn.Module):
    """Within the block, ``decoder.layers`` are compiled twins of its layers (same parameters;
    made once per decoder, shapes dynamic so new lengths do not recompile each time)."""
    import torch._dynamo

    compiled = _COMPILED.get(decoder)
    if compiled is None:
        layers = decoder.layers
        # every layer is its own compiled module over one shared code object: let dynamo keep a
        # graph for each (with and without grad) instead of falling back to eager after 8
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, 4 * len(layers) + 8)
        config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit,
                                                  8 * len(layers) + 16)
        compiled = torch.nn.ModuleList(torch.compile(layer, dynamic=True) for layer in layers)
        _COMPILED[decoder] = compiled
    original = decoder.layers
    decoder.layers = compiled
    try:
        yield
    finally:
        decoder.layers = original


def chosen_token_logps(model, input_ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                       temperature: float = 1.0, compute_entropy: bool = False,
                       entropy_grad: bool = True, compile_layers: bool = False,
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the decoder on right-padded ``input_ids`` (no attention mask: causal attention alone is
    exact for every real token when all padding sits after it) and score ``targets[i]`` at
    ``positions[i] = (row, column)``. Returns flat ``(logp, entropy or None)``.
    ``compile_layers``: run the decoder layers through ``torch.compile`` (:func:`compiled_layers`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    with compiled_layers(decoder) if compile_layers else contextlib.nullcontext():
        hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    picked = hidden[positions[:, 0], positions[:, 1]]
    logp, entropy = ChosenTokenLogProbs.apply(picked, base.get_output_embeddings().weight, targets,
                                              float(temperature), compute_entropy, entropy_grad)
    return logp, entropy if compute_entropy else None
