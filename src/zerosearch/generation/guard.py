"""The noisy guard's decoding constraint: strings one row must not spell.

A simulator in noisy mode must not write a gold answer; a prompt cannot guarantee that, so the
in-process back end refuses, token by token, any draw that would complete one of the answer's
spellings (:class:`zerosearch.generation.kv.KVDecoder` through :func:`apply_guards` and its redraw
loop, or transformers' ``generate`` through :class:`GuardProcessor`). Over HTTP the same strings go
to vLLM as ``bad_words`` instead (:mod:`zerosearch.llm.openai_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Guard:
    """What one row must not write. ``phrases``: the strings as answer matching sees them
    (:func:`zerosearch.rewards.normalize_answer`: lower case, no punctuation or articles), refused
    wherever a word starts with one; ``sequences``: the token sequences that spell the given
    strings canonically (with and without a leading space), masked out before a draw so that a
    redraw is rarely needed; ``window``: generated tokens to decode when looking at the newest."""

    phrases: list[str]
    sequences: list[tuple[int, ...]]
    window: int

    @classmethod
    def build(cls, tokenizer, strings: Sequence[str]) -> "Guard | None":
        """The guard against ``strings`` (None when none of them has a word to refuse)."""
        from zerosearch.rewards import normalize_answer

        strings = [t for t in dict.fromkeys(strings) if t]
        phrases = [p for p in dict.fromkeys(normalize_answer(t) for t in strings) if p]
        if not phrases:
            return None
        seqs: dict[tuple[int, ...], None] = {}
        for text in strings:
            for variant in (text, " " + text):
                ids = tuple(tokenizer(variant, add_special_tokens=False)["input_ids"])
                if ids:
                    seqs[ids] = None
        # a spelling takes at most a token a byte (UTF-8 characters are up to 4 bytes), and may add
        # articles and punctuation that matching ignores
        return cls(phrases, list(seqs), 2 * max(len(t.encode()) for t in strings) + 8)

    def banned_next(self, generated: Sequence[int]) -> list[int]:
        """Tokens that would complete a canonical sequence after ``generated``: the last token of
        every sequence whose other tokens are the tail of ``generated``."""
        out = []
        for seq in self.sequences:
            k = len(seq) - 1
            if k == 0 or (len(generated) >= k and tuple(generated[-k:]) == seq[:-1]):
                out.append(seq[-1])
        return out

    def occurrences(self, tokenizer, ids: Sequence[int]) -> list[int]:
        """How often each phrase starts a word in the text of ``ids``, in any case, tokenisation
        or punctuation (so "Jack TrICE" and "GateHouse Media, Inc." count)."""
        from zerosearch.rewards import normalize_answer

        text = " " + normalize_answer(tokenizer.decode(list(ids), skip_special_tokens=False))
        return [text.count(" " + p) for p in self.phrases]

    def spelled_by(self, tokenizer, generated: Sequence[int], token: int,
                   before: list[int] | None = None) -> bool:
        """Whether appending ``token`` to ``generated`` completes a phrase. ``before``: the
        :meth:`occurrences` in the window without the token, when the caller already has them."""
        tail = list(generated[-self.window:])
        if before is None:
            before = self.occurrences(tokenizer, tail)
        return any(a > b for a, b in zip(self.occurrences(tokenizer, tail + [token]), before))


def apply_guards(logits: torch.Tensor, generated: Sequence[Sequence[int]],
                 guards: Sequence["Guard | None"]) -> None:
    """Set to -inf, row by row, the logits of tokens that would complete a canonical sequence."""
    for row, (gen, guard) in enumerate(zip(generated, guards)):
        if guard is not None:
            ids = guard.banned_next(gen)
            if ids:
                logits[row, ids] = float("-inf")


class GuardProcessor:
    """Canonical-sequence bans for transformers' ``generate`` (a logits processor; ``width`` is the
    padded prompt width, so a row's generated tokens are its ids from there on). Unlike
    :class:`KVDecoder` it cannot see the drawn token, so other spellings are not refused."""

    def __init__(self, guards: Sequence["Guard | None"], width: int):
        self.guards, self.width = list(guards), width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        apply_guards(scores, [row[self.width:].tolist() for row in input_ids], self.guards)
        return scores
