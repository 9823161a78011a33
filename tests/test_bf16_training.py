"""bf16 autocast in the optimisation (``training.bf16``) agrees with fp32: per-token log-probs, the
loss and the gradients of fp32 master weights, on the tiny model and on SmolLM2.

Tolerances follow bf16's precision: 8 bits of mantissa round each matmul input by up to 2^-9
relative, and the error compounds over layers, so a deep model is allowed more than the tiny one.
The stated bounds: per-token |log p difference| (mean and max over real completion tokens), the
absolute loss difference, and the gradient's relative error and cosine to the fp32 gradient."""

import pytest
import torch

TOLERANCES = {
    # model: (mean |dlogp|, max |dlogp|, |dloss|, gradient relative error, gradient cosine)
    "embedded:tiny-random": (0.005, 0.02, 0.005, 0.03, 0.999),
    "embedded:smollm2-135m-instruct": (0.08, 0.6, 0.05, 0.12, 0.99),
}


def _pass(model, ids, attn, keep, advantages, bf16: bool):
    """Log-probs and entropies of the completion columns, a policy-gradient loss over them (the
    advantage-weighted mean log-prob of real tokens, as GRPO's loss at ratio 1), its gradient."""
    from zerosearch.train.logps import plain_token_logps

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logps, entropy = plain_token_logps(model, ids, attn, keep, 1.0, compute_entropy=True)
    mask = attn[:, -keep:].float()
    loss = -(advantages[:, None] * logps * mask).sum() / mask.sum()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    return logps.detach(), loss.detach(), grad.double()


@pytest.mark.parametrize("name", list(TOLERANCES))
def test_bf16_autocast_agrees_with_fp32(name):
    from transformers import AutoModelForCausalLM

    from zerosearch.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch.float32)
    rows, length, keep = 4, 48, 24  # small: SmolLM2's forward and backward run twice
    ids = torch.randint(10, min(model.config.vocab_size, 20000), (rows, length))
    attn = torch.ones_like(ids)
    attn[0, :10] = 0  # left padding of a short prompt
    attn[1, -7:] = 0  # right padding of a short completion
    advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    lp32, loss32, g32 = _pass(model, ids, attn, keep, advantages, bf16=False)
    lp16, loss16, g16 = _pass(model, ids, attn, keep, advantages, bf16=True)
    assert lp16.dtype == torch.float32
    mean_lp, max_lp, max_loss, max_rel, min_cos = TOLERANCES[name]
    real = attn[:, -keep:].bool()
    diff = (lp32 - lp16)[real].abs()
    assert diff.mean() <= mean_lp and diff.max() <= max_lp, (diff.mean(), diff.max())
    assert (lp16[~real] == 0).all()
    assert abs(loss32 - loss16) <= max_loss, (loss32, loss16)
    rel = ((g32 - g16).norm() / g32.norm()).item()
    cos = (g32 @ g16 / (g32.norm() * g16.norm())).item()
    assert rel <= max_rel and cos >= min_cos, (rel, cos)
    assert diff.max() > 0  # autocast did run the matmuls in bf16
