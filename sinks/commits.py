"""Offsets written -> committed: asynchronous commits and their answers.

The runner never blocks on the group coordinator: a synchronous librdkafka commit waits for its
answer without limit, and while it waits no rebalance is served and no watchdog runs. So each
commit is sent asynchronously with the exact offsets written; its answer arrives in a later poll
(``on_commit``). Answers come in the order the commits were sent, so the age of the oldest
unanswered one is the send time at the head of a queue.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from lineguard.logs import get_logger

from . import metrics as prom

log = get_logger(__name__)

PartitionKey = tuple[str, int]


class CommitCounts(Protocol):
    commits: int
    commit_failures: int


class CommitTracker:
    """Sends commits of written offsets and keeps the unanswered ones' send times."""

    def __init__(self, kind: str, counts: CommitCounts, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.counts = counts
        self._clock = clock
        self._sent_at: deque[float] = deque()  # one entry per unanswered commit, oldest first

    def commit(self, consumer: Any, offsets: Mapping[PartitionKey, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) without waiting."""
        if not offsets:
            return
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                            asynchronous=True)
        except KafkaException as exc:
            self._failed(exc)
            return
        self._sent_at.append(self._clock())

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback: one answer, to the oldest commit sent."""
        if self._sent_at:
            self._sent_at.popleft()
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            self._failed(err or failed[0].error)
            return
        self.counts.commits += 1
        prom.COMMITS.labels(self.kind).inc()

    @property
    def unanswered(self) -> int:
        return len(self._sent_at)

    def oldest_unanswered_s(self) -> float | None:
        """Seconds since the oldest unanswered commit was sent; None when all are answered."""
        return self._clock() - self._sent_at[0] if self._sent_at else None

    def forget_unanswered(self) -> None:
        """The consumer that sent them is gone: their answers will not come."""
        self._sent_at.clear()

    def await_answers(self, consumer: Any, timeout_s: float, poll_slice_s: float) -> None:
        """Poll until every commit sent is answered (or ``timeout_s`` passes). Messages polled
        meanwhile are dropped: they are after the committed offsets, so they are read again."""
        deadline = self._clock() + timeout_s
        while self._sent_at and self._clock() < deadline:
            consumer.poll(poll_slice_s)
        if self._sent_at:
            log.warning("sink %s: %d commits unanswered after %.0fs; their messages will be read again",
                        self.kind, len(self._sent_at), timeout_s)

    def _failed(self, error: object) -> None:
        # The rows are written; if the group moved on, whoever owns the partitions
        # now re-reads them, and the replay collapses. Nothing is lost.
        self.counts.commit_failures += 1
        prom.COMMIT_FAILURES.labels(self.kind).inc()
        log.warning("sink %s: commit failed (%s); these messages will be read again", self.kind, error)
