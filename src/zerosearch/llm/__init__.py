"""Chat back ends for simulation LLMs (and judges): OpenAI-compatible endpoints or in-process."""

from zerosearch.llm.base import Completion, GenerationParams, LLMBackend

__all__ = ["Completion", "GenerationParams", "LLMBackend"]
