"""The simulated search engine: a simulation LLM writes useful or noisy documents on demand.

Each request draws its mode (forced, or noisy with the request's ``noise_prob``, the curriculum's
value), is turned into the fine-tuned simulator prompt (byte-exact with the released simulators) or
the prompt-based one (an instruct model with a one-shot demo), and the model's output is parsed into
at most top-k documents. Fewer than top-k is reported as a shortfall; none at all, or a back-end
failure, is an error on the result, never a silent empty answer.

The simulation LLM reads the gold answers in both modes, and a small one often writes them into
noisy documents anyway (a film question whose answer is "American" gets "a 1922 American silent
film"): noise that gives the answer away. ``noisy_guard`` forbids it while decoding: in noisy mode
the back end bans the token sequences that spell each gold answer (:func:`answer_surface_forms`).
A ban on token sequences cannot cover every tokenisation (vLLM's ``bad_words`` and transformers'
``generate`` see only the canonical ones), so the engine also reads what came back: a noisy output
with a document that still spells an answer is drawn again, up to :data:`GUARD_REDRAWS` times, and
the documents that spell one after that are dropped (a shortfall; an error when none is left).
Useful mode is untouched.
"""

from __future__ import annotations

import random
import string
import threading
from dataclasses import replace

from typing import Any, Sequence

from zerosearch.engines.base import Document, SearchRequest, SearchResult, draw_mode, failed
from zerosearch.llm.base import GenerationParams, LLMBackend
from zerosearch.protocol import (GOLD_STYLES, finetuned_sim_messages, parse_documents,
                                 prompt_sim_messages)
from zerosearch.rewards import normalize_answer

STYLES = ("finetuned", "prompt")
_ARTICLES = ("a ", "an ", "the ")
_EDGE = string.punctuation + string.whitespace + "“”‘’«»"
GUARD_REDRAWS = 3
"""Fresh draws of a guarded noisy output whose documents still spell a gold answer."""


def answer_surface_forms(answers: Sequence[str]) -> list[str]:
    """How each gold answer may be spelled in a document: without surrounding quotes and
    punctuation or a leading article (answer matching ignores both), runs of whitespace as one
    space, as written, lower-cased, capitalised, every word capitalised and upper-cased. The
    in-process decoder refuses other spellings too (any case, punctuation); these are the ones it
    masks before drawing, and all an HTTP back end gets (vLLM's ``bad_words``, which adds the
    leading-space variant of each itself). Empty and yes/no answers are skipped; order is stable,
    duplicates dropped."""
    forms: dict[str, None] = {}
    for answer in answers:
        core = " ".join((answer or "").split()).strip(_EDGE)
        if core.lower() in ("yes", "no"):  # a noisy document may say "no"; it gives nothing away
            continue
        if core.lower().startswith(_ARTICLES):
            core = core.split(" ", 1)[1].strip(_EDGE)
        if not core:
            continue
        words = " ".join(w[0].upper() + w[1:] for w in core.split(" "))
        for form in (core, core.lower(), core[0].upper() + core[1:], words, core.upper()):
            forms[form] = None
    return list(forms)


def spells_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a word of ``text`` starts one of ``answers`` as answer matching reads both (lower
    case, no punctuation or articles, runs of spaces as one): the rule the in-process decoder
    applies token by token, so "Paris," and "PARIS" count and "comparison" does not."""
    phrases = [p for p in (normalize_answer(a) for a in answers) if p]
    padded = " " + normalize_answer(text)
    return any(" " + p in padded for p in phrases)


class SimulatedEngine:
    """Documents written by a simulation LLM behind any :class:`LLMBackend`."""

    name = "simulated"

    def __init__(self, backend: LLMBackend, style: str = "finetuned",
                 params: GenerationParams | None = None, seed: int | None = None,
                 template: str | None = None, noisy_guard: bool = False, gold: str = "first"):
        if style not in STYLES:
            raise ValueError(f"unknown simulator style {style!r}; choose one of {', '.join(STYLES)}")
        self.backend, self.style = backend, style
        self.params = params or GenerationParams()
        self.template = template
        self.noisy_guard = noisy_guard
        if gold not in GOLD_STYLES:
            raise ValueError(f"unknown gold style {gold!r}; choose one of {', '.join(GOLD_STYLES)}")
        self.gold = gold
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def messages(self, request: SearchRequest, mode: str) -> list[dict[str, str]]:
        """The chat messages sent to the simulation LLM for ``request`` in ``mode``."""
        if self.style == "finetuned":
            return finetuned_sim_messages(request.query, request.question, request.golden_answers,
                                          mode, request.topk, self.template, self.gold)
        return prompt_sim_messages(request.query, request.question, request.golden_answers, mode,
                                   request.topk)

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        if not requests:
            return []
        with self._rng_lock:
            modes = [draw_mode(r, self._rng) for r in requests]
        conversations = [self.messages(r, m) for r, m in zip(requests, modes)]
        if not self.noisy_guard:
            completions = self.backend.chat(conversations, self.params)
            return [self._result(r, m, c, self._parse(r, c)) for r, m, c in
                    zip(requests, modes, completions)]
        avoid = [answer_surface_forms(r.golden_answers) if m == "noisy" else []
                 for r, m in zip(requests, modes)]
        completions = list(self.backend.chat(conversations, self.params, avoid=avoid))
        docs = [self._parse(r, c) for r, c in zip(requests, completions)]
        for _ in range(GUARD_REDRAWS):
            again = [i for i, d in enumerate(docs)
                     if avoid[i] and any(spells_answer(t, avoid[i]) for t in d)]
            if not again:
                break
            redrawn = self.backend.chat([conversations[i] for i in again], self.params,
                                        avoid=[avoid[i] for i in again])
            for i, c in zip(again, redrawn):  # a failed or empty redraw keeps what it would replace
                spent = completions[i].latency_s + c.latency_s
                fresh = self._parse(requests[i], c)
                if fresh:
                    completions[i], docs[i] = c, fresh
                completions[i] = replace(completions[i], latency_s=spent)
        results = []
        for request, mode, completion, found, words in zip(requests, modes, completions, docs, avoid):
            kept = [t for t in found if not (words and spells_answer(t, words))]
            if found and not kept:
                results.append(failed(
                    request, self.name, f"every noisy document spelled a gold answer after "
                    f"{GUARD_REDRAWS} redraws (noisy guard)", "bad_output", mode=mode,
                    latency_s=completion.latency_s, retries=completion.retries))
            else:
                results.append(self._result(request, mode, completion, kept))
        return results

    @staticmethod
    def _parse(request: SearchRequest, completion) -> list[str]:
        return parse_documents(completion.text, request.topk) if completion.text is not None else []

    def _result(self, request: SearchRequest, mode: str, completion, docs: list[str]) -> SearchResult:
        """The result of one completion whose output parsed into ``docs``."""
        if completion.text is None:
            return failed(request, self.name, completion.error or "no completion",
                          completion.error_kind or "internal", mode=mode,
                          latency_s=completion.latency_s, retries=completion.retries)
        if not docs:
            return failed(request, self.name,
                          f"simulator output held no documents: {completion.text[:200]!r}",
                          "bad_output", mode=mode, latency_s=completion.latency_s,
                          retries=completion.retries)
        return SearchResult(
            query=request.query, documents=[Document(text=d) for d in docs], engine=self.name,
            topk=request.topk, mode=mode, latency_s=completion.latency_s,
            retries=completion.retries, row_id=request.row_id)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "style": self.style, **self.backend.describe(),
                "max_new_tokens": self.params.max_new_tokens, "temperature": self.params.temperature,
                "noisy_guard": self.noisy_guard}

    def close(self) -> None:
        self.backend.close()


