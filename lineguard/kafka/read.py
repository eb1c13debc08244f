"""Read a topic through to its end: what tests, the demo and tools use to see what a stream holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from confluent_kafka import TopicPartition

from lineguard.config import KafkaConfig
from lineguard.kafka.clients import consumer_client
from lineguard.kafka.offsets import watermarks


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_topic(kafka_cfg: KafkaConfig, topic_names: str | Iterable[str], timeout_s: float = 60.0) -> list[Record]:
    """Every message retained in ``topic_names`` (one name or several), from the low watermark up
    to the end offsets taken when called, ordered by topic, partition and offset.

    Assigns the partitions (no group is joined, nothing is committed), so it returns as soon as
    the last message is read. Raises TimeoutError if a partition could not be read to its end.
    """
    names = [topic_names] if isinstance(topic_names, str) else list(topic_names)
    ends: dict[tuple[str, int], tuple[int, int]] = {
        (topic, p): marks for topic in names for p, marks in watermarks(kafka_cfg, topic).items()}
    remaining = {key for key, (low, high) in ends.items() if high > low}
    out: list[Record] = []
    if not remaining:
        return out
    consumer = consumer_client(kafka_cfg, f"lineguard-read-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, ends[(topic, p)][0]) for topic, p in sorted(remaining)])
    deadline = time.monotonic() + timeout_s
    try:
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue  # partition EOF, or a broker away for a moment: poll again
            key = (msg.topic(), msg.partition())
            end = ends[key][1]
            if msg.offset() < end:
                out.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))
            if msg.offset() >= end - 1:
                remaining.discard(key)
    finally:
        consumer.close()
    if remaining:
        raise TimeoutError(f"could not read {sorted(remaining)} to their end within {timeout_s:.0f}s")
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return out


def offsets_at(kafka_cfg: KafkaConfig, topic: str, timestamp_ms: int, timeout_s: float = 10.0) -> dict[int, int]:
    """{partition: the first offset whose message timestamp is at or after ``timestamp_ms``}; the high
    watermark where no message is that recent (the broker's offsets_for_times answers -1 there)."""
    ends = watermarks(kafka_cfg, topic, timeout_s)
    consumer = consumer_client(kafka_cfg, f"lineguard-seek-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, p, timestamp_ms) for p in ends], timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition][1] for tp in found}


def iter_range(kafka_cfg: KafkaConfig, topic: str, starts: dict[int, int], ends: dict[int, int],
               idle_timeout_s: float = 60.0) -> Iterator[Record]:
    """The messages of ``topic`` from ``starts[p]`` up to (not including) ``ends[p]`` on each partition,
    one at a time (frames are large: nothing is held). No group is joined; nothing is committed.
    Raises TimeoutError when no message came for ``idle_timeout_s`` before the ends were reached."""
    remaining = {p for p in starts if ends.get(p, 0) > starts[p]}
    if not remaining:
        return
    consumer = consumer_client(kafka_cfg, f"lineguard-range-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(remaining)])
    deadline = time.monotonic() + idle_timeout_s
    try:
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: nothing from partitions {sorted(remaining)} "
                                   f"for {idle_timeout_s:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.partition() not in remaining:
                continue
            deadline = time.monotonic() + idle_timeout_s
            if msg.offset() < ends[msg.partition()]:
                yield Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
            if msg.offset() >= ends[msg.partition()] - 1:
                remaining.discard(msg.partition())
                consumer.incremental_unassign([TopicPartition(topic, msg.partition())])
    finally:
        consumer.close()
