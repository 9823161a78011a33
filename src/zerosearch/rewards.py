"""Answer metrics: strict EM, cover-EM and token F1 over a list of gold answers.

Normalisation is SQuAD's: lowercase, drop punctuation, drop the articles a/an/the, collapse white
space. ``exact_match`` is strict EM (the paper's headline metric); ``cover_em`` is what the public
code called "EM" (a normalised gold answer occurs inside the normalised prediction), kept under its
own name so that numbers are never mixed up. A prediction of ``None`` (no ``<answer>`` found) scores
0 everywhere: it is never replaced by a default answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: Sequence[str] | str) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    return [g for g in golds if g is not None]


def exact_match(prediction: str | None, golds: Sequence[str] | str) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def cover_em(prediction: str | None, golds: Sequence[str] | str) -> float:
    """1.0 when some non-empty normalised gold answer occurs in the normalised prediction."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any((g := normalize_answer(gold)) and g in pred for gold in _golds(golds)))


def _f1_one(pred_tokens: list[str], gold: str) -> float:
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return 0.0  # as SQuAD v1.1: an empty answer never scores, not even against an empty gold
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golds: Sequence[str] | str) -> float:
    """Token-level F1 after normalisation, the maximum over the gold answers."""
    if prediction is None:
        return 0.0
    pred_tokens = normalize_answer(prediction).split()
    return max((_f1_one(pred_tokens, g) for g in _golds(golds)), default=0.0)


METRICS: dict[str, Callable[[str | None, Sequence[str]], float]] = {
    "em": exact_match,
    "cover_em": cover_em,
    "f1": f1_score,
}


def get_metric(name: str) -> Callable[[str | None, Sequence[str]], float]:
    """Look a metric up by name (``em``, ``cover_em``, ``f1``) with a clear error."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}") from None
