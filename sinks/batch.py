"""The batch a sink gathers: decoded records and, per partition, the next offset to commit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from confluent_kafka import Message

T = TypeVar("T")
PartitionKey = tuple[str, int]


@dataclass
class Record(Generic[T]):
    message: Message  # the source: topic, partition, offset, key and raw bytes for a dead letter
    item: T

    @property
    def partition(self) -> PartitionKey:
        return (self.message.topic(), self.message.partition())


class Batch(Generic[T]):
    """Messages consumed since the last commit, grouped per partition: the records to write and
    the offset after each partition's last message (dead-lettered ones included)."""

    def __init__(self) -> None:
        self.records: list[Record[T]] = []
        self.offsets: dict[PartitionKey, int] = {}
        self.started: float | None = None  # when its first message arrived

    def __len__(self) -> int:
        return len(self.records)

    def add(self, message: Message, item: T | None, *, written: bool = True) -> None:
        """Take ``message``; ``written=False`` when it needs no write (it was dead-lettered)."""
        if self.started is None:
            self.started = time.monotonic()
        if written:
            self.records.append(Record(message, item))  # type: ignore[arg-type]
        self.offsets[(message.topic(), message.partition())] = message.offset() + 1

    def holds(self, partition: PartitionKey) -> bool:
        return partition in self.offsets

    def discard(self, record: Record[T]) -> None:
        """Take ``record`` out of the writes; its offset stays to be committed (it was dead-lettered)."""
        self.records = [r for r in self.records if r is not record]

    def due(self, batch_size: int, flush_interval_s: float) -> bool:
        if self.started is None:
            return False
        return len(self.records) >= batch_size or time.monotonic() - self.started >= flush_interval_s

    def drop(self, partitions: set[PartitionKey]) -> int:
        """Forget ``partitions`` (they went to another consumer); returns the records dropped."""
        before = len(self.records)
        self.records = [r for r in self.records if r.partition not in partitions]
        for key in partitions:
            self.offsets.pop(key, None)
        if not self.offsets:
            self.started = None
        return before - len(self.records)

    def clear(self) -> None:
        self.records, self.offsets, self.started = [], {}, None
