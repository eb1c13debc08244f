"""The writer contract: what a sink reads, how it decodes a message, how it writes a batch.

A :class:`~lineguard.sinks.runner.SinkRunner` does the rest (consume, batch, retry, dead
letters, commits). ``write`` must be idempotent (delivery is at-least-once) and raise
:class:`~lineguard.sinks.errors.PermanentWriteError` for records that can never be written;
any other exception is retried with back-off.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Generic, TypeVar

from lineguard.config import Settings
from lineguard.schemas import topics

from .errors import PermanentWriteError

T = TypeVar("T")

__all__ = ["PermanentWriteError", "Writer"]


class Writer(abc.ABC, Generic[T]):
    """Decode and write one kind of message. Subclasses set the class names and give ``write``."""

    kind: ClassVar[str]  # the sink's name: consumer group, metrics label, dead-letter component
    topic_kind: ClassVar[str]  # the per-line topics it reads: "verdicts" or "heatmaps"
    message_type: ClassVar[Any]  # the schemas message class those topics carry

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def topic_pattern(cls) -> str:
        """The regex (``^...``) of every line's topic this writer reads."""
        return topics.pattern(cls.topic_kind)

    @classmethod
    def topic_for_line(cls, line_id: str) -> str:
        return topics.per_line(cls.topic_kind, line_id)

    def decode(self, data: bytes) -> T:
        """Bytes to item; raises SchemaError for input that can never be written."""
        return self.message_type.decode(data, max_bytes=self.settings.kafka.message_max_bytes)

    @abc.abstractmethod
    def write(self, batch: list[T]) -> None:
        """Write the batch. Idempotent; PermanentWriteError when (some of) it can never be written."""

    def close(self) -> None:
        """Called when the runner stops. Stores are the caller's and stay open."""
