"""Offsets read from the brokers: watermarks, a group's committed offsets, and its lag.

Every call here is blocking; from an event loop, run it in a thread.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from lineguard.config import KafkaConfig
from lineguard.kafka.clients import consumer_client

# Answered while a partition's leadership settles (a new topic, a restarted broker);
# librdkafka does not always flag them retriable for offset requests.
_TRANSIENT_OFFSET_ERRORS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
}


def _offset_reader(kafka_cfg: KafkaConfig, group: str | None = None) -> Consumer:
    """A consumer that never subscribes: it reads offsets (of ``group``, if given) without joining
    any group, so a throwaway group id registers nothing on the broker."""
    return consumer_client(kafka_cfg, group or f"lineguard-offsets-{uuid.uuid4().hex}",
                           **{"enable.auto.commit": False})


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    entry = metadata.topics.get(topic)
    if entry is None or entry.error is not None:
        reason = entry.error if entry is not None else "not in metadata"
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"{topic}: {reason}"))
    return sorted(entry.partitions)


def _watermark_with_retry(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """Watermarks of one partition, retrying retriable errors (a broker that just restarted
    answers NOT_LEADER_FOR_PARTITION until it has taken its partitions back) until ``deadline``.
    Never from the client's cache: a paused or idle consumer's cache is stale."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=max(0.5, deadline - time.monotonic()), cached=False)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in _TRANSIENT_OFFSET_ERRORS) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def watermarks(kafka_cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} of every partition of ``topic``, read from the brokers."""
    consumer = _offset_reader(kafka_cfg)
    try:
        deadline = time.monotonic() + timeout_s
        return {p: _watermark_with_retry(consumer, TopicPartition(topic, p), deadline)
                for p in _partitions(consumer, topic, timeout_s)}
    finally:
        consumer.close()


def topic_end_offsets(kafka_cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """{partition: high watermark}: the offset the next message of each partition will get."""
    return {p: high for p, (_low, high) in watermarks(kafka_cfg, topic, timeout_s).items()}


def count_messages(kafka_cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> int:
    """Messages currently retained in ``topic``: the sum of high minus low watermarks."""
    return sum(high - low for low, high in watermarks(kafka_cfg, topic, timeout_s).values())


def committed_offsets(kafka_cfg: KafkaConfig, group: str, topic_names: Iterable[str],
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """{(topic, partition): the offset ``group`` committed} on every partition of ``topic_names``,
    read without joining the group. Negative where the group committed nothing."""
    consumer = _offset_reader(kafka_cfg, group)
    try:
        wanted = [TopicPartition(topic, p) for topic in topic_names for p in _partitions(consumer, topic, timeout_s)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(wanted, timeout=timeout_s)}
    finally:
        consumer.close()


def group_lag(kafka_cfg: KafkaConfig, group: str, topic_names: Iterable[str], timeout_s: float = 10.0) -> int:
    """Messages of ``topic_names`` not yet committed by consumer group ``group`` (its lag).

    A partition the group never committed counts from its low watermark, so a
    group that has not started yet shows the whole backlog.
    """
    tracker = LagTracker(kafka_cfg, group)
    try:
        partitions = []
        for topic in topic_names:
            partitions += [(topic, p) for p in _partitions(tracker.reader(), topic, timeout_s)]
        return sum(tracker.lag(partitions, timeout_s=timeout_s).values())
    finally:
        tracker.close()


class LagTracker:
    """Per-partition lag of one consumer group: the broker's high watermark minus the group's
    committed offset. The one lag measurement of sinks, processors and tools.

    It keeps one client, opened at the first measurement, that never joins the group: it
    only reads its committed offsets. Given a Prometheus ``gauge``, :meth:`measure` sets
    ``gauge.labels(*gauge_labels, topic, partition)`` and removes the partitions that moved
    to another member since the last measurement. Blocking: call it from a thread, not
    from an event loop.
    """

    def __init__(self, kafka_cfg: KafkaConfig, group: str, gauge: Any = None,
                 gauge_labels: tuple[str, ...] = ()) -> None:
        self.kafka_cfg = kafka_cfg
        self.group = group
        self._gauge = gauge
        self._gauge_labels = gauge_labels
        self._exported: set[tuple[str, int]] = set()
        self._consumer: Consumer | None = None
        self.last: dict[tuple[str, int], int] = {}  # the latest measure(): what the holder reports

    def reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = _offset_reader(self.kafka_cfg, self.group)
        return self._consumer

    def lag(self, partitions: Iterable[tuple[str, int]], committed: Mapping[tuple[str, int], int] | None = None,
            timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
        """{(topic, partition): messages after the group's committed offset}.

        ``committed`` holds offsets the caller already knows (a sink knows what it
        committed), so only the other partitions are asked of the broker. A partition
        without a committed offset counts from its low watermark (the whole backlog).
        """
        known = dict(committed or {})
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        deadline = time.monotonic() + timeout_s
        consumer = self.reader()
        unknown = [TopicPartition(topic, p) for topic, p in wanted if known.get((topic, p), -1) < 0]
        if unknown:
            for tp in consumer.committed(unknown, timeout=timeout_s):
                known[(tp.topic, tp.partition)] = tp.offset
        out: dict[tuple[str, int], int] = {}
        for topic, p in wanted:
            low, high = _watermark_with_retry(consumer, TopicPartition(topic, p), deadline)
            start = known.get((topic, p), -1)
            out[(topic, p)] = max(0, high - (start if start >= 0 else low))
        return out

    def measure(self, partitions: Iterable[tuple[str, int]], committed: Mapping[tuple[str, int], int] | None = None,
                timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
        """:meth:`lag` of the partitions the caller holds now, kept as :attr:`last` and exported."""
        lag = self.lag(partitions, committed, timeout_s)
        if self._gauge is not None:
            for (topic, p), value in lag.items():
                self._gauge.labels(*self._gauge_labels, topic, str(p)).set(value)
            for topic, p in self._exported - set(lag):  # partitions that moved to another member
                self._gauge.remove(*self._gauge_labels, topic, str(p))
            self._exported = set(lag)
        self.last = lag
        return lag

    @property
    def total(self) -> int:
        return sum(self.last.values())

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# The name the sinks and tools have used for it.
LagProbe = LagTracker
