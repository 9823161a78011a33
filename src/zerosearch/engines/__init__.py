"""Search engines behind one batched interface; :func:`build_engine` makes one from a config."""

from zerosearch.engines.base import (Document, Engine, EngineError, SearchRequest, SearchResult)
from zerosearch.engines.factory import ENGINE_KINDS, EngineConfig, build_engine

__all__ = ["Document", "Engine", "EngineError", "SearchRequest", "SearchResult", "EngineConfig",
           "ENGINE_KINDS", "build_engine"]
