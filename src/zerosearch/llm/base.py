"""The chat back-end interface shared by the simulated engine and LLM judges.

A back end takes a batch of conversations and returns one :class:`Completion` per conversation.
It never raises for a failed request: the completion says what went wrong (``error_kind``
``unavailable`` / ``timeout`` / ``bad_request``) and how many retries were spent, so callers can
count failures instead of hiding them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

Message = dict[str, str]


@dataclass
class GenerationParams:
    """Sampling settings for one batch."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0


@dataclass
class Completion:
    """The text a back end produced for one conversation, or why it produced none."""

    text: str | None
    error: str | None = None
    error_kind: str | None = None
    retries: int = 0
    latency_s: float = 0.0


class LLMBackend(Protocol):
    """Anything that completes batches of chat conversations."""

    def chat(self, conversations: Sequence[list[Message]], params: GenerationParams,
             avoid: Sequence[Sequence[str]] | None = None) -> list[Completion]:
        """One completion per conversation. ``avoid`` (optional, one list per conversation):
        strings that conversation's output must not spell, enforced while decoding."""
        ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...
