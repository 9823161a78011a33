"""The engine configuration (the ``engine:`` section of every YAML config) and the factory.

The same fields are the engine flags of ``zerosearch serve``, ``search``, ``train`` and ``eval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zerosearch.engines.base import Engine, EngineError

ENGINE_KINDS = ("simulated", "bm25", "dense", "web", "remote", "hybrid")
REAL_KINDS = ("bm25", "dense", "web", "remote")
"""Engines that return real documents (what ``hybrid`` caches and pays for)."""
FALLBACKS = ("simulated", "none")


@dataclass
class EngineConfig:
    """Which search engine to use and how to reach it."""

    kind: str = "simulated"
    """One of simulated, bm25, dense, web, remote, hybrid (a real engine behind a cache and a
    budget, the simulator for the rest; see :mod:`zerosearch.engines.hybrid`)."""
    topk: int = 5
    """Documents per search (the paper uses 5)."""
    # -- corpus engines (bm25, dense)
    corpus: str | None = None
    """FlashRAG-format JSONL passage corpus (bm25 and dense)."""
    index_path: str | None = None
    """Where to save / load the index; default beside the corpus, or the cache if that is read-only."""
    # -- simulated engine
    model: str = "embedded:smollm2-135m-instruct"
    """Simulation LLM (simulated) or encoder (dense: default embedded:minilm when this is unset)."""
    style: str = "finetuned"
    """Simulator prompt: ``finetuned`` (released simulators' prompt) or ``prompt`` (one-shot demo)."""
    sim_gold: str = "first"
    """Fine-tuned style: which gold answers the prompt names, ``first`` (what the released
    simulators were tuned and driven with) or ``joined`` (up to three, joined by " or ")."""
    backend_urls: list[str] = field(default_factory=list)
    """OpenAI-compatible endpoints serving the simulation LLM; empty = run it in process."""
    backend_model: str | None = None
    """Model name to request from the endpoints; None asks ``/v1/models``."""
    api_key: str | None = None
    """Bearer key for the endpoints (or the remote zerosearch server)."""
    temperature: float = 0.8
    """Simulator sampling temperature (paper: about 0.8)."""
    top_p: float = 1.0
    """Simulator nucleus sampling."""
    noisy_guard: bool = False
    """Simulator: in noisy mode, ban the token sequences that spell a gold answer while decoding, so
    noisy documents cannot give the answer away (in process; over HTTP as vLLM's ``bad_words``).
    Off by default, as in the paper; see ``sim fidelity`` for what it changes."""
    max_new_tokens: int = 256
    """Simulator output budget (paper: up to 600; five 30-word documents need about 250)."""
    timeout_s: float = 15.0
    """Per-attempt timeout for any HTTP back end (an in-process model gets 10 minutes a batch: a CPU
    needs about a minute for 16 outputs of 200 tokens)."""
    max_retries: int = 2
    """Bounded retries (exponential backoff with jitter) before a request fails with an error."""
    deadline_s: float = 30.0
    """Bound on all attempts of one HTTP back-end request together; inside ``zerosearch serve`` the
    call's own ``--request-timeout`` also bounds it, and a call answered 504 stops retrying."""
    device: str = "cpu"
    """In-process model device (cpu, cuda, cuda:1)."""
    dtype: str = "auto"
    """In-process model dtype: auto (bf16 on CUDA and on CPUs with native bf16, AMX or AVX512-BF16;
    fp32 elsewhere), float32, bfloat16."""
    max_batch_size: int = 32
    """In-process back end: most requests generated together."""
    seed: int | None = None
    """Seed for useful/noisy draws and in-process sampling."""
    # -- web engine
    web_api_key: str | None = None
    """SerpAPI key (or $SERPAPI_API_KEY)."""
    web_url: str = "https://serpapi.com/search.json"
    """SerpAPI-compatible endpoint."""
    # -- remote engine
    remote_url: str | None = None
    """Base URL of another ``zerosearch serve``."""
    # -- hybrid engine
    real: str = "web"
    """Hybrid: the real engine behind the cache (bm25, dense, web or remote; its own fields apply)."""
    cache_path: str | None = None
    """Hybrid: the SQLite file holding cached real results and the budget spent so far (default
    ``~/.cache/zerosearch/hybrid/search-cache.sqlite``)."""
    cache_ttl_s: float | None = None
    """Hybrid: a cached result older than this many seconds is searched again; None = kept forever."""
    budget_calls: int | None = None
    """Hybrid: most queries ever sent to the real engine, counted in the cache file across restarts;
    None = no cap on calls."""
    budget_dollars: float | None = None
    """Hybrid: most dollars ever spent on real queries at ``price_per_1k``; None = no cap on spend."""
    price_per_1k: float = 0.0
    """Hybrid: the real engine's price per 1,000 queries in dollars (spend and ``budget_dollars``)."""
    fallback: str = "simulated"
    """Hybrid: what answers a miss once the budget is spent: ``simulated`` (the simulator these
    fields describe) or ``none`` (an error result saying the budget is spent)."""

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise EngineError(f"unknown engine {self.kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
        if not 1 <= self.topk <= 50:
            raise EngineError(f"topk must be between 1 and 50, got {self.topk}")
        kind = self.kind
        if kind == "hybrid":
            self._check_hybrid()
            kind = self.real
        if kind in ("bm25", "dense") and not self.corpus:
            raise EngineError(f"the {kind} engine needs a corpus: pass --corpus PATH "
                              "(FlashRAG JSONL: one {\"id\", \"contents\"} object a line)")
        if kind == "remote" and not self.remote_url:
            raise EngineError("the remote engine needs --remote-url http://HOST:PORT")
        if self.timeout_s <= 0 or self.deadline_s <= 0 or self.max_retries < 0:
            raise EngineError("timeout_s and deadline_s must be > 0 and max_retries >= 0, got "
                              f"{self.timeout_s}, {self.deadline_s}, {self.max_retries}")

    def _check_hybrid(self) -> None:
        if self.real not in REAL_KINDS:
            raise EngineError(f"the hybrid engine's real engine must be one of "
                              f"{', '.join(REAL_KINDS)}, got {self.real!r} (--real)")
        if self.fallback not in FALLBACKS:
            raise EngineError(f"fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if self.budget_calls is not None and self.budget_calls < 0:
            raise EngineError(f"budget_calls must be >= 0, got {self.budget_calls}")
        if self.price_per_1k < 0:
            raise EngineError(f"price_per_1k must be >= 0, got {self.price_per_1k}")
        if self.budget_dollars is not None and (self.budget_dollars < 0 or self.price_per_1k <= 0):
            raise EngineError("budget_dollars needs a price: set price_per_1k (--price-per-1k) > 0 "
                              f"and budget_dollars >= 0 (got {self.budget_dollars})")
        if self.cache_ttl_s is not None and self.cache_ttl_s <= 0:
            raise EngineError(f"cache_ttl_s must be > 0 or unset, got {self.cache_ttl_s}")


def retry_policy(cfg: EngineConfig):
    """The :class:`~zerosearch.retry.RetryPolicy` of every HTTP client ``cfg`` builds."""
    from zerosearch.retry import RetryPolicy

    return RetryPolicy(timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                       deadline_s=cfg.deadline_s)


def build_llm_backend(cfg: EngineConfig):
    """The chat back end for a simulated engine: HTTP endpoints if given, else in process."""
    from zerosearch.llm.openai_backend import OpenAIBackend

    if cfg.backend_urls:
        return OpenAIBackend(cfg.backend_urls, model=cfg.backend_model, api_key=cfg.api_key,
                             policy=retry_policy(cfg))
    from zerosearch.llm.transformers_backend import TransformersBackend

    return TransformersBackend(cfg.model, device=cfg.device, dtype=cfg.dtype,
                               max_batch_size=cfg.max_batch_size,
                               seed=cfg.seed)


def build_engine(cfg: EngineConfig, log=print) -> Engine:
    """Make the engine ``cfg`` describes (loads models and indexes; may take a while)."""
    if cfg.kind == "hybrid":
        from zerosearch.engines.hybrid import build_hybrid

        return build_hybrid(cfg, log=log)
    if cfg.kind == "bm25":
        from zerosearch.engines.bm25 import BM25Engine

        return BM25Engine(cfg.corpus, cfg.index_path, log=log)
    if cfg.kind == "dense":
        from zerosearch.engines.dense import DenseEngine

        encoder = cfg.model if cfg.model != EngineConfig.model else "embedded:minilm"
        return DenseEngine(cfg.corpus, encoder, cfg.index_path, device=cfg.device, log=log)
    if cfg.kind == "simulated":
        from zerosearch.engines.simulated import SimulatedEngine
        from zerosearch.llm.base import GenerationParams

        params = GenerationParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        return SimulatedEngine(build_llm_backend(cfg), cfg.style, params, cfg.seed,
                               noisy_guard=cfg.noisy_guard, gold=cfg.sim_gold)
    if cfg.kind == "web":
        from zerosearch.engines.web import WebEngine

        return WebEngine(cfg.web_api_key, cfg.web_url, policy=retry_policy(cfg))
    from zerosearch.engines.remote import RemoteEngine

    return RemoteEngine(cfg.remote_url, cfg.api_key, policy=retry_policy(cfg))
