"""The order in which RL training reads its questions.

A plain shuffle lets one step draw only questions the policy cannot answer yet (in the mini-world:
two 3-hop questions) and the next only easy ones, so with a few questions a step the reward curve
mostly shows which questions each step drew. A stratified order interleaves the groups of a
question field (hop count, data source) so that every run of consecutive questions mirrors the
groups' shares in the whole set: each step compares like with like.
"""

from __future__ import annotations

import random
from typing import Hashable, Sequence


def stratified_order(groups: Sequence[Hashable], seed: int) -> list[int]:
    """Indices of ``groups`` (one group value per question) in stratified order: the questions of
    each group shuffled with ``seed``, then dealt out one at a time, each position going to the
    group furthest behind its share of the positions so far (ties: the larger group first). After
    any ``k`` positions, every group holds its share of ``k`` to within one question."""
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    rng = random.Random(seed)
    keys = sorted(members, key=lambda g: (-len(members[g]), str(g)))
    for key in keys:
        rng.shuffle(members[key])
    n = len(groups)
    taken = dict.fromkeys(keys, 0)
    order = []
    for position in range(1, n + 1):
        # the first key with the largest deficit (max keeps the first of equals)
        key = max(keys, key=lambda g: position * len(members[g]) / n - taken[g])
        order.append(members[key][taken[key]])
        taken[key] += 1
    return order
