"""lineguard.kafka's offsets, lag and read_topic against the real broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from lineguard.config import Settings
from lineguard.kafka import (LagTracker, committed_offsets, consumer_client, ensure_topics, group_lag,
                             producer_client, read_topic, watermarks)
from lineguard.schemas import topics

pytestmark = [pytest.mark.kafka]


def _produce(settings: Settings, topic: str, per_partition: dict[int, int]) -> None:
    producer = producer_client(settings.kafka)
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, key=f"k{partition}".encode(), value=f"p{partition}-{i}".encode(),
                             partition=partition)
    assert producer.flush(30) == 0


def _commit(settings: Settings, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = consumer_client(settings.kafka, group, **{"enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def test_read_topic_returns_every_message_in_order(settings: Settings) -> None:
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    verdicts, heatmaps = topics.verdicts(line), topics.heatmaps(line)
    _produce(settings, verdicts, {0: 3, 1: 2})
    _produce(settings, heatmaps, {1: 1})

    records = read_topic(settings.kafka, [verdicts, heatmaps])
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in records] == [
        (heatmaps, 1, 0, b"k1", b"p1-0"),
        *[(verdicts, 0, i, b"k0", f"p0-{i}".encode()) for i in range(3)],
        *[(verdicts, 1, i, b"k1", f"p1-{i}".encode()) for i in range(2)],
    ]
    assert [r.value for r in read_topic(settings.kafka, heatmaps)] == [b"p1-0"]  # one name works too
    assert read_topic(settings.kafka, topics.frames(line)) == []  # an empty topic returns at once
    assert watermarks(settings.kafka, verdicts) == {0: (0, 3), 1: (0, 2)}


def test_committed_offsets_and_lag_of_a_group(settings: Settings) -> None:
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    topic = topics.verdicts(line)
    group = f"test-offsets-{uuid.uuid4().hex[:8]}"
    _produce(settings, topic, {0: 5, 1: 4})

    assert all(o < 0 for o in committed_offsets(settings.kafka, group, [topic]).values())
    assert group_lag(settings.kafka, group, [topic]) == 9  # nothing committed: the whole backlog
    _commit(settings, group, {(topic, 0): 2})
    assert committed_offsets(settings.kafka, group, [topic])[(topic, 0)] == 2
    assert group_lag(settings.kafka, group, [topic]) == 3 + 4

    registry = CollectorRegistry()
    gauge = Gauge("test_lag", "lag", ["component", "topic", "partition"], registry=registry)
    tracker = LagTracker(settings.kafka, group, gauge=gauge, gauge_labels=("sink",))
    try:
        assert tracker.measure([(topic, 0), (topic, 1)]) == {(topic, 0): 3, (topic, 1): 4}
        assert tracker.total == 7
        assert registry.get_sample_value("test_lag", {"component": "sink", "topic": topic, "partition": "1"}) == 4
        # Offsets the caller knows (a sink's own commits) are used instead of the broker's.
        assert tracker.lag([(topic, 0)], committed={(topic, 0): 5}) == {(topic, 0): 0}
        # A partition that moved to another member leaves the gauge.
        assert tracker.measure([(topic, 0)]) == {(topic, 0): 3}
        assert registry.get_sample_value("test_lag", {"component": "sink", "topic": topic, "partition": "1"}) is None
    finally:
        tracker.close()
