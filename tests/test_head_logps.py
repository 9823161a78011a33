"""The LM head's chosen-token log-probs / entropies and their gradients equal plain autograd."""

import pytest
import torch

from zerosearch.hardware import has_c_compiler, has_python_headers
from zerosearch.train import head_logps
from zerosearch.train.head_logps import ChosenTokenLogProbs, head_supported


def reference(hidden, weight, targets, temperature):
    logits = hidden @ weight.t() / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(1, targets[:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.3])
def test_values_and_gradients_match_autograd(monkeypatch, temperature, entropy_weight):
    monkeypatch.setattr(head_logps, "CHUNK", 3)  # several chunks, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    g_lp, g_ent = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)

    want_lp, want_ent = reference(hidden, weight, targets, temperature)
    want = torch.autograd.grad((want_lp * g_lp).sum() + entropy_weight * (want_ent * g_ent).sum(),
                               (hidden, weight))
    lp, ent = ChosenTokenLogProbs.apply(hidden, weight, targets, temperature, True, entropy_weight > 0)
    assert torch.allclose(lp, want_lp) and torch.allclose(ent, want_ent)
    loss = (lp * g_lp).sum() + (entropy_weight * (ent * g_ent).sum() if entropy_weight else 0)
    got = torch.autograd.grad(loss, (hidden, weight))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)
    if not entropy_weight:
        assert not ent.requires_grad


def test_backward_runs_once_only():
    hidden = torch.randn(2, 4, requires_grad=True)
    lp, _ = ChosenTokenLogProbs.apply(hidden, torch.randn(6, 4), torch.tensor([1, 2]), 1.0, False, False)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once only"):
        lp.sum().backward()


def test_bf16_autocast_matches_float32_within_rounding():
    torch.manual_seed(0)
    hidden = torch.randn(5, 32, requires_grad=True)
    weight = torch.randn(40, 32, requires_grad=True)
    targets = torch.randint(0, 40, (5,))
    want_lp, _ = reference(hidden, weight, targets, 1.0)
    (gh_want, gw_want) = torch.autograd.grad(want_lp.sum(), (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = ChosenTokenLogProbs.apply(hidden, weight, targets, 1.0, False, False)
    assert lp.dtype == torch.float32 and torch.allclose(lp, want_lp, atol=0.5)
    gh, gw = torch.autograd.grad(lp.sum(), (hidden, weight))
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    assert torch.allclose(gh, gh_want, atol=0.1) and torch.allclose(gw, gw_want, atol=0.1)


def test_head_supported_only_for_plain_projections(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert head_supported(model)
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style capping: the model's forward
    assert not head_supported(model)
    model.config.final_logit_softcapping = None
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
    assert not head_supported(model)
    assert not head_supported(torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel))


def test_model_forward_fallback_gives_the_same_logps(tiny_model, monkeypatch):
    """plain_token_logps through the model's own forward (unsupported heads) and through the
    chosen-token head agree, gradients included."""
    from transformers import AutoModelForCausalLM

    from zerosearch.train import logps as trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (3, 11))
    attn = torch.ones_like(ids)
    attn[0, :2] = 0
    attn[1, -3:] = 0
    fast = trainer.plain_token_logps(model, ids, attn, 5, 0.7, compute_entropy=True)
    g_fast = torch.autograd.grad(fast[0].sum() + fast[1].sum(), model.lm_head.weight)[0]
    monkeypatch.setattr(head_logps, "head_supported", lambda m: False)
    slow = trainer.plain_token_logps(model, ids, attn, 5, 0.7, compute_entropy=True)
    g_slow = torch.autograd.grad(slow[0].sum() + slow[1].sum(), model.lm_head.weight)[0]
    assert torch.allclose(fast[0], slow[0], atol=1e-5) and torch.allclose(fast[1], slow[1], atol=1e-4)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)


@pytest.mark.skipif(not (has_c_compiler() and has_python_headers()),
                    reason="torch.compile on a CPU needs a C compiler and the Python headers")
def test_compiled_layers_give_the_same_logps_and_gradients(tiny_model):
    """compile_layers: same log-probs, entropies and gradients (of a layer weight) as eager, for
    two lengths (dynamic shapes); the model's own layers are left in place afterwards."""
    from transformers import AutoModelForCausalLM

    from zerosearch.train import logps as trainer

    from torch._dynamo.utils import counters

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    layers = model.model.layers
    graphs = counters["stats"]["unique_graphs"]
    weight = layers[0].mlp.down_proj.weight
    torch.manual_seed(0)
    for width in (11, 17):
        ids = torch.randint(10, 1000, (3, width))
        attn = torch.ones_like(ids)
        attn[1, -3:] = 0
        got = []
        for compiled in (False, True):
            lp, ent = trainer.plain_token_logps(model, ids, attn, 5, 0.7, compute_entropy=True,
                                                compile_layers=compiled)
            got.append((lp, ent, torch.autograd.grad(lp.sum() + ent.sum(), weight)[0]))
        (lp0, ent0, g0), (lp1, ent1, g1) = got
        assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(ent0, ent1, atol=1e-4)
        assert torch.allclose(g0, g1, atol=1e-5) and g0.abs().sum() > 0
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo really compiled the layers
    assert model.model.layers is layers
    assert not any("_orig_mod" in k for k in model.state_dict())
