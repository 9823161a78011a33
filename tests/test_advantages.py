"""REINFORCE++ and GAE advantages against values computed by hand."""

import math

import torch

from zerosearch.train.advantages import gae, masked_whiten, reinforce_pp_advantages, token_rewards


def test_token_rewards_put_the_score_on_the_last_policy_token():
    # row 0: tokens [p, p, env, p, pad]; row 1: [p, p, pad, pad, pad]
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 9.0, 0.3, 9.0], [0.5, 0.5, 9.0, 9.0, 9.0]])
    r = token_rewards(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1)
    expected = torch.tensor([[-0.01, -0.02, 0.0, 1 - 0.03, 0.0], [-0.05, -0.05, 0.0, 0.0, 0.0]])
    assert torch.allclose(r, expected)


def test_reinforce_pp_returns_then_whitening():
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.0, 0.3], [0.5, 0.5, 0.0, 0.0]])
    adv = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1)
    # token rewards: row0 [-0.01, -0.02, (env), 0.97]; row1 [-0.05, -0.05]
    # returns-to-go (gamma 1, env skipped): row0 [0.94, 0.95, 0.97]; row1 [-0.10, -0.05]
    returns = [0.94, 0.95, 0.97, -0.10, -0.05]
    mean = sum(returns) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 5)
    whitened = [(x - mean) / std for x in returns]
    assert torch.allclose(adv[0], torch.tensor([whitened[0], whitened[1], 0.0, whitened[2]]), atol=1e-5)
    assert torch.allclose(adv[1], torch.tensor([whitened[3], whitened[4], 0.0, 0.0]), atol=1e-5)


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.9, 7.0, 0.2]])
    mask = torch.tensor([[1, 1, 0, 1]])  # position 2 is an information token
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # steps (env skipped): r = [0, 0, 1], v = [0.5, 0.9, 0.2], v_after_last = 0
    # deltas: [0 + 0.9 - 0.5, 0 + 0.2 - 0.9, 1 + 0 - 0.2] = [0.4, -0.7, 0.8]
    # A2 = 0.8; A1 = -0.7 + 0.5 * 0.8 = -0.3; A0 = 0.4 + 0.5 * -0.3 = 0.25
    assert torch.allclose(adv, torch.tensor([[0.25, -0.3, 0.0, 0.8]]))
    assert torch.allclose(ret, torch.tensor([[0.75, 0.6, 0.0, 1.0]]))
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)  # lam 1: return minus value
    assert torch.allclose(adv1, torch.tensor([[0.5, 0.1, 0.0, 0.8]]))


def test_masked_whiten_ignores_masked_entries():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    out = masked_whiten(x, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(out, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)


def test_trim_columns_keeps_every_real_column():
    from zerosearch.train.logps import trim_columns

    # prompt width 4 (left padded), completion width 5 (right padded)
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 1, 1, 0, 0, 0, 0]])
    assert trim_columns(attn, 5) == (2, 6, 2)  # columns 2..5; completion keeps 2 of 5 columns
    # a chunk whose completions are all empty still keeps one completion column
    assert trim_columns(torch.tensor([[1, 1, 0, 0]]), 2) == (0, 3, 1)
    assert trim_columns(torch.zeros(1, 4, dtype=torch.long), 2) == (0, 4, 2)


def test_plain_token_logps_match_trl_fused_head(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from zerosearch.train.logps import plain_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids = torch.randint(10, 1000, (2, 12))
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # a left-padded row
    keep = 5
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :-keep] = -100
    fused = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    logps, entropy = plain_token_logps(model, ids, attn, keep, temperature=0.7, compute_entropy=True)
    assert torch.allclose(logps, fused.log_probs[:, -keep:], atol=1e-4)
    assert torch.allclose(entropy, fused.entropy[:, -keep:], atol=1e-4)
    # entropies outside autograd (logged only): the same values, no graph, same log-prob gradients
    lp2, ent2 = plain_token_logps(model, ids, attn, keep, temperature=0.7, compute_entropy=True,
                                  entropy_grad=False)
    assert torch.allclose(ent2, entropy) and not ent2.requires_grad and entropy.requires_grad
    g1 = torch.autograd.grad(logps.sum(), model.lm_head.weight)[0]
    g2 = torch.autograd.grad(lp2.sum(), model.lm_head.weight)[0]
    assert torch.allclose(g1, g2)


def test_compact_rows_moves_real_tokens_left():
    from zerosearch.train.logps import compact_rows

    # prompt width 3 (left padded), completion width 3 (right padded)
    ids = torch.tensor([[0, 5, 6, 7, 8, 0],
                        [4, 5, 6, 7, 0, 0]])
    attn = (ids > 0).long()
    packed, mask, source, real, first = compact_rows(ids, attn, 3)
    assert packed.tolist() == [[5, 6, 7, 8], [4, 5, 6, 7]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    # completion tokens 7, 8 of row 0 sit at packed 2, 3 (predicted from 1, 2); row 1's 7 at 3
    assert first == 1 and real.tolist() == [[True, True, False], [True, False, False]]
    assert source[0, :2].tolist() == [0, 1] and source[1, 0].item() == 1


def test_packed_token_logps_equal_each_row_alone(tiny_model):
    """TRL's layout (left-padded prompts, right-padded completions of different lengths) packed:
    every real completion token gets the log-probability and entropy it has with its row alone."""
    from transformers import AutoModelForCausalLM

    from zerosearch.train.logps import plain_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    prompts, completions, keep, width = [3, 6, 5], [5, 2, 0], 5, 6
    ids = torch.randint(10, 1000, (3, width + keep))
    attn = torch.zeros_like(ids)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        attn[r, width - p:width + c] = 1
    logps, entropy = plain_token_logps(model, ids, attn, keep, temperature=0.7, compute_entropy=True)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        alone = ids[r, width - p:width + c][None]
        logits = model(input_ids=alone).logits[0, p - 1:p + c - 1] / 0.7
        want = logits.log_softmax(-1).gather(1, alone[0, p:, None])[:, 0]
        ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        assert torch.allclose(logps[r, :c], want, atol=1e-5)
        assert torch.allclose(entropy[r, :c], ent, atol=1e-4)
        assert (logps[r, c:] == 0).all() and (entropy[r, c:] == 0).all()


def test_reorder_rows_moves_every_per_row_entry_together():
    from zerosearch.train.logps import reorder_rows

    batch = {"ids": torch.tensor([[1, 1], [2, 2], [3, 3]]), "adv": torch.tensor([0.1, 0.2, 0.3]),
             "names": ["a", "b", "c"], "num_items_in_batch": torch.tensor(7)}
    out = reorder_rows(batch, torch.tensor([2, 0, 1]))
    assert out["ids"][:, 0].tolist() == [3, 1, 2] and torch.equal(out["adv"], batch["adv"][[2, 0, 1]])
    assert out["names"] == ["c", "a", "b"] and out["num_items_in_batch"].item() == 7
