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
Useful mode is untouched.
"""

from __future__ import annotations

import random
import string
import threading

from typing import Any, Sequence

from zerosearch.engines.base import Document, SearchRequest, SearchResult, draw_mode, failed
from zerosearch.llm.base import GenerationParams, LLMBackend
from zerosearch.protocol import (GOLD_STYLES, finetuned_sim_messages, parse_documents,
                                 prompt_sim_messages)

STYLES = ("finetuned", "prompt")
_ARTICLES = ("a ", "an ", "the ")
_EDGE = string.punctuation + string.whitespace + "“”‘’«»"


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
        if self.noisy_guard:
            avoid = [answer_surface_forms(r.golden_answers) if m == "noisy" else []
                     for r, m in zip(requests, modes)]
            completions = self.backend.chat(conversations, self.params, avoid=avoid)
        else:
            completions = self.backend.chat(conversations, self.params)
        results = []
        for request, mode, completion in zip(requests, modes, completions):
            if completion.text is None:
                results.append(failed(request, self.name, completion.error or "no completion",
                                      completion.error_kind or "internal", mode=mode,
                                      latency_s=completion.latency_s, retries=completion.retries))
                continue
            docs = parse_documents(completion.text, request.topk)
            if not docs:
                results.append(failed(request, self.name,
                                      f"simulator output held no documents: {completion.text[:200]!r}",
                                      "bad_output", mode=mode, latency_s=completion.latency_s,
                                      retries=completion.retries))
                continue
            results.append(SearchResult(
                query=request.query, documents=[Document(text=d) for d in docs], engine=self.name,
                topk=request.topk, mode=mode, latency_s=completion.latency_s,
                retries=completion.retries, row_id=request.row_id))
        return results

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "style": self.style, **self.backend.describe(),
                "max_new_tokens": self.params.max_new_tokens, "temperature": self.params.temperature,
                "noisy_guard": self.noisy_guard}

    def close(self) -> None:
        self.backend.close()


