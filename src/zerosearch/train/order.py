"""The order in which RL training reads its questions.

A plain shuffle lets one step draw only questions the policy cannot answer yet (in the mini-world:
two 3-hop questions) and the next only easy ones, so with a few questions a step the reward curve
mostly shows which questions each step drew. A stratified order deals the groups of a question
field (hop count, data source) out step by step: every step holds at least its whole share of each
group, and the steps so far together hold each group's share to within one question.
"""

from __future__ import annotations

import random
from typing import Hashable, Sequence


def stratified_order(groups: Sequence[Hashable], seed: int, block: int = 1) -> list[int]:
    """Indices of ``groups`` (one group value per question) in stratified order, in blocks of
    ``block`` questions (a training step's). The questions of each group are shuffled with
    ``seed``; each block first takes ``floor(block x share)`` questions of every group, then fills
    its remaining places from the groups furthest behind their share of all places dealt by the
    block's end (ties: the larger group). A group that runs out simply stops being dealt."""
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    rng = random.Random(seed)
    keys = sorted(members, key=lambda g: (-len(members[g]), str(g)))
    for key in keys:
        rng.shuffle(members[key])
    n = len(groups)
    share = {key: len(members[key]) / n for key in keys}
    taken = dict.fromkeys(keys, 0)
    order: list[int] = []
    while len(order) < n:
        size = min(block, n - len(order))
        end = len(order) + size
        picks = dict.fromkeys(keys, 0)
        for key in keys:
            picks[key] = min(int(size * share[key]), len(members[key]) - taken[key])
        while sum(picks.values()) < size:
            left = [k for k in keys if taken[k] + picks[k] < len(members[k])]
            # the first key with the largest deficit (max keeps the first of equals)
            key = max(left, key=lambda k: end * share[k] - taken[k] - picks[k])
            picks[key] += 1
        for key in keys:
            order.extend(members[key][taken[key]:taken[key] + picks[key]])
            taken[key] += picks[key]
    return order
