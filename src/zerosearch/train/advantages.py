"""Token-level advantages for REINFORCE++ and PPO (GRPO's come from TRL).

All functions take ``(B, T)`` tensors over completion positions and a ``mask`` that is 1 on the
policy's own tokens; environment tokens (information blocks) are skipped: the time steps are the
policy's tokens in order, so the reward and the credit flow across an information block as if it
were not there, and environment tokens get advantage 0.
"""

from __future__ import annotations

from typing import Callable

import torch


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                  all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(values - mean) / std over the masked entries of the whole batch; 0 elsewhere.

    ``all_sum`` sums a tensor over every training process (``accelerator.reduce(t, "sum")``), so
    several processes whiten with the statistics of the global batch, not each of its own slice.
    """
    total = all_sum or (lambda t: t)
    m = mask.to(values.dtype)
    sums = total(torch.stack([m.sum(), (values * m).sum()]))
    n = sums[0].clamp(min=1.0)
    mean = sums[1] / n
    var = total((((values - mean) * m) ** 2).sum()) / n
    return (values - mean) * torch.rsqrt(var + eps) * m


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: ``-beta * kl`` on every policy token, plus the sequence score on the last one."""
    m = mask.to(kl.dtype)
    rewards = -beta * kl * m
    has = m.sum(-1) > 0
    last = (m * torch.arange(1, m.size(1) + 1, device=m.device)).argmax(-1)
    rows = torch.arange(m.size(0), device=m.device)[has]
    rewards[rows, last[has]] += scores[has].to(rewards.dtype)
    return rewards


def _compress(x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [row[m.bool()] for row, m in zip(x, mask)]


def _expand(rows: list[torch.Tensor], mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(like)
    for i, (row, m) in enumerate(zip(rows, mask)):
        out[i, m.bool()] = row
    return out


def reinforce_pp_advantages(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                            gamma: float = 1.0,
                            all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """REINFORCE++: returns-to-go of the KL-penalised token rewards, whitened over the batch (the
    global batch of every process with ``all_sum``, see :func:`masked_whiten`)."""
    rewards = token_rewards(scores, kl, mask, beta)
    returns = []
    for r in _compress(rewards, mask):
        g, out = 0.0, torch.zeros_like(r)
        for t in range(r.numel() - 1, -1, -1):
            g = r[t] + gamma * g
            out[t] = g
        returns.append(out)
    return masked_whiten(_expand(returns, mask, rewards), mask, all_sum=all_sum)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy's tokens; returns (advantages, returns).

    The value after the last token is 0 (the episode ends). Advantages are not whitened here.
    """
    advs, rets = [], []
    for r, v in zip(_compress(rewards, mask), _compress(values, mask)):
        adv, last = torch.zeros_like(r), 0.0
        for t in range(r.numel() - 1, -1, -1):
            next_v = v[t + 1] if t + 1 < r.numel() else 0.0
            delta = r[t] + gamma * next_v - v[t]
            last = delta + gamma * lam * last
            adv[t] = last
        advs.append(adv)
        rets.append(adv + v)
    return _expand(advs, mask, rewards), _expand(rets, mask, rewards)
