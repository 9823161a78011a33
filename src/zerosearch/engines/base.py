"""One batched interface for every search engine (simulated, BM25, dense, web, remote).

Training, evaluation, serving and simulator-data collection all talk to engines through
:class:`Engine.search`, which takes a batch of :class:`SearchRequest` and returns one
:class:`SearchResult` per request, in order. A request carries the row it came from (question, gold
answers, row id), so a simulated engine can never mix up rows. A failure is a result with ``error``
set and an ``error_kind``, never an empty "No information available" that nobody counts.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, Sequence

from zerosearch.protocol import MODES

ErrorKind = Literal["unavailable", "timeout", "bad_output", "bad_request", "internal"]


@dataclass
class SearchRequest:
    """One query, with the context a simulated engine needs."""

    query: str
    question: str = ""
    """The question of the row that issued the query (simulators condition on it)."""
    golden_answers: list[str] = field(default_factory=list)
    """All gold answers of that row."""
    topk: int = 5
    mode: str | None = None
    """Force ``useful`` or ``noisy`` documents; None draws with ``noise_prob``."""
    noise_prob: float | None = None
    """Probability of noisy documents when ``mode`` is None (the curriculum's value). None = useful."""
    row_id: str | int | None = None
    """Opaque id of the row, echoed back in the result."""

    def validate(self, max_topk: int = 50, max_query_chars: int = 2000) -> None:
        """Raise ValueError naming the first problem with this request."""
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError("query is empty")
        for name, text in [("query", self.query), ("question", self.question),
                           *((f"golden_answers[{i}]", a) for i, a in enumerate(self.golden_answers))]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate: no tokenizer or response can take it
                raise ValueError(f"{name} holds a lone surrogate ({text[err.start]!a}) at character "
                                 f"{err.start}; send valid Unicode") from None
        if len(self.query) > max_query_chars:
            raise ValueError(f"query has {len(self.query)} characters; the limit is {max_query_chars}")
        if not 1 <= self.topk <= max_topk:
            raise ValueError(f"topk must be between 1 and {max_topk}, got {self.topk}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} or null, got {self.mode!r}")
        if self.noise_prob is not None and not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")


@dataclass
class Document:
    """One retrieved or generated document."""

    text: str
    title: str | None = None
    id: str | None = None
    score: float | None = None
    contents: str | None = None
    """The corpus row's ``contents`` unchanged (real corpus engines); None for generated documents."""

    def corpus_contents(self) -> str:
        """``contents`` as stored when known, else ``"Title"\\ntext`` (or the text alone)."""
        if self.contents is not None:
            return self.contents
        return f'"{self.title}"\n{self.text}' if self.title else self.text


@dataclass
class SearchResult:
    """What an engine returned for one request."""

    query: str
    documents: list[Document]
    engine: str
    topk: int
    mode: str | None = None
    """``useful``/``noisy`` for simulated engines, None for real ones."""
    latency_s: float = 0.0
    error: str | None = None
    error_kind: ErrorKind | None = None
    retries: int = 0
    row_id: str | int | None = None
    source: str | None = None
    """Where the documents came from, when an engine mixes sources (hybrid: ``cache``, ``real``,
    ``simulator`` or ``refused``); None for single-source engines."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def shortfall(self) -> int:
        """How many documents fewer than asked (0 when complete)."""
        return max(self.topk - len(self.documents), 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shortfall"] = self.shortfall
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchResult":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["documents"] = [Document(**d) for d in data.get("documents", [])]
        return cls(**fields)


def failed(request: SearchRequest, engine: str, error: str, kind: ErrorKind, *,
           mode: str | None = None, latency_s: float = 0.0, retries: int = 0) -> SearchResult:
    """A result that says why the request produced no documents."""
    return SearchResult(query=request.query, documents=[], engine=engine, topk=request.topk,
                        mode=mode, latency_s=latency_s, error=error, error_kind=kind,
                        retries=retries, row_id=request.row_id)


def draw_mode(request: SearchRequest, rng: random.Random) -> str:
    """The mode a simulated engine uses for ``request``: forced, or drawn with ``noise_prob``."""
    if request.mode is not None:
        return request.mode
    if request.noise_prob is None:
        return "useful"
    return "noisy" if rng.random() < request.noise_prob else "useful"


class Engine(Protocol):
    """Anything that answers batches of search requests."""

    name: str

    def search(self, requests: Sequence[SearchRequest]) -> list[SearchResult]:
        """One result per request, in order. Back-end failures become results with ``error`` set."""
        ...

    def describe(self) -> dict[str, Any]:
        """A small JSON-able description for ``/health`` and logs."""
        ...

    def close(self) -> None:
        """Release connections, threads and models."""
        ...


class EngineError(ValueError):
    """An engine cannot be built or used at all (bad configuration, missing key, missing corpus)."""
