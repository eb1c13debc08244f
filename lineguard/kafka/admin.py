"""Kafka plumbing every part shares: topic creation and client settings with raised size limits.

Frames are camera images of several megabytes, far above Kafka's 1 MB
defaults, so every hop has to agree on the limit: the broker (the local stack
raises it), each topic (``max.message.bytes``), producers
(``message.max.bytes``) and consumers (``fetch.max.bytes``,
``max.partition.fetch.bytes``, ``receive.message.max.bytes``). The numbers all
derive from ``KafkaConfig.message_max_bytes`` here, so they cannot drift apart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lineguard.config import KafkaConfig
from lineguard.schemas import topics

# A record batch carries framing (batch header, record header, key, headers) on top of
# the value. Producers refuse values above message_max_bytes; topics and fetches allow
# this much more, so a frame right at the limit is not rejected for its envelope.
FRAMING_HEADROOM_BYTES = 64 * 1024

# librdkafka's own defaults; the raised limits never go below them.
_LIBRDKAFKA_FETCH_MAX_BYTES = 52_428_800
_LIBRDKAFKA_RECEIVE_MAX_BYTES = 100_000_000


def topic_max_message_bytes(kafka_cfg: KafkaConfig) -> int:
    """``max.message.bytes`` for lineguard topics: the configured limit plus batch framing."""
    return kafka_cfg.message_max_bytes + FRAMING_HEADROOM_BYTES


def producer_config(kafka_cfg: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """confluent-kafka Producer settings with the message size limit raised.

    ``extra`` is merged last and passed through as is, so dotted librdkafka keys
    go in as ``**{"linger.ms": 5}`` and Python callbacks as ``error_cb=fn``.
    """
    conf = kafka_cfg.confluent()
    conf["message.max.bytes"] = kafka_cfg.message_max_bytes
    conf.update(extra)
    return conf


def consumer_config(kafka_cfg: KafkaConfig, group: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka Consumer settings for ``group`` with fetch limits raised to fit a whole frame.

    Starts from the earliest offset when the group has none, so nothing produced
    before the first start is skipped. ``extra`` is merged last, as in producer_config.
    """
    per_partition = kafka_cfg.message_max_bytes + FRAMING_HEADROOM_BYTES
    fetch_max = max(_LIBRDKAFKA_FETCH_MAX_BYTES, per_partition)
    conf = kafka_cfg.confluent()
    conf.update(
        {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "message.max.bytes": kafka_cfg.message_max_bytes,
            "max.partition.fetch.bytes": per_partition,
            "fetch.max.bytes": fetch_max,
            # librdkafka requires receive.message.max.bytes >= fetch.max.bytes + 512.
            "receive.message.max.bytes": max(_LIBRDKAFKA_RECEIVE_MAX_BYTES, fetch_max + 1024 * 1024),
        }
    )
    conf.update(extra)
    return conf


def admin_client(kafka_cfg: KafkaConfig) -> AdminClient:
    return AdminClient(kafka_cfg.confluent())


def _wanted_topics(kafka_cfg: KafkaConfig, line_ids: Iterable[str]) -> list[NewTopic]:
    size = {"max.message.bytes": str(topic_max_message_bytes(kafka_cfg))}
    retained = {**size, "retention.ms": str(kafka_cfg.verdict_retention_ms)}
    rf = kafka_cfg.replication_factor
    parts = kafka_cfg.frame_partitions
    wanted: list[NewTopic] = []
    for line_id in dict.fromkeys(line_ids):  # de-duplicated, order kept
        # Verdict and heatmap topics get as many partitions as frames so sinks scale like processors.
        wanted.append(NewTopic(topics.frames(line_id), parts, rf, config=dict(size)))
        wanted.append(NewTopic(topics.verdicts(line_id), parts, rf, config=dict(retained)))
        wanted.append(NewTopic(topics.heatmaps(line_id), parts, rf, config=dict(size)))
    wanted.append(NewTopic(topics.DEADLETTER, 1, rf, config=dict(size)))
    return wanted


def ensure_topics(
    kafka_cfg: KafkaConfig, line_ids: Iterable[str], timeout_s: float = 30.0
) -> list[str]:
    """Create the per-line topics and the dead-letter topic where missing; return the names created.

    Idempotent: topics that exist are left as they are (their configuration is
    not altered). Returns once every wanted topic has a leader for each
    partition, so callers can produce right away.
    """
    admin = admin_client(kafka_cfg)
    wanted = _wanted_topics(kafka_cfg, line_ids)
    futures = admin.create_topics(wanted, request_timeout=timeout_s, operation_timeout=timeout_s)
    created = [name for name, future in futures.items() if _created(future, timeout_s)]
    _wait_for_leaders(admin, [t.topic for t in wanted], timeout_s)
    return created


def _created(future: Any, timeout_s: float) -> bool:
    """True if the topic was created, False if it existed; raise on any other error.

    The future keeps the "already exists" exception, whose traceback holds the
    caller's frames (and so the AdminClient) in a reference cycle: the client
    would live on until a gc, reconnecting and logging. Dropping the traceback
    breaks the cycle.
    """
    try:
        future.result(timeout=timeout_s)
        return True
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            exc.__traceback__ = None
            return False
        raise


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Block until each topic is in the metadata with a leader on every partition."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while True:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        for name in list(pending):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                continue
            if all(p.leader >= 0 for p in topic.partitions.values()):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s}s: {sorted(pending)}")
        time.sleep(0.1)


def _watermarks(kafka_cfg: KafkaConfig, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} read from the brokers (never from a client cache)."""
    # A consumer that never subscribes, so the throwaway group id registers nothing on the broker.
    consumer = Consumer(consumer_config(kafka_cfg, f"lineguard-offsets-{uuid.uuid4().hex}"))
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        entry = metadata.topics.get(topic)
        if entry is None or entry.error is not None:
            reason = entry.error if entry is not None else "not in metadata"
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"{topic}: {reason}"))
        deadline = time.monotonic() + timeout_s
        return {p: _watermark_with_retry(consumer, TopicPartition(topic, p), deadline) for p in sorted(entry.partitions)}
    finally:
        consumer.close()


# Answered while a partition's leadership settles (a new topic, a restarted broker);
# librdkafka does not always flag them retriable for offset requests.
_TRANSIENT_OFFSET_ERRORS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
}


def _watermark_with_retry(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """Watermarks of one partition, retrying retriable errors (a broker that just restarted
    answers NOT_LEADER_FOR_PARTITION until it has taken its partitions back) until ``deadline``."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=max(0.5, deadline - time.monotonic()), cached=False)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in _TRANSIENT_OFFSET_ERRORS) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def topic_end_offsets(kafka_cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """{partition: high watermark}: the offset the next message of each partition will get."""
    return {p: high for p, (_low, high) in _watermarks(kafka_cfg, topic, timeout_s).items()}


def count_messages(kafka_cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> int:
    """Messages currently retained in ``topic``: the sum of high minus low watermarks."""
    return sum(high - low for low, high in _watermarks(kafka_cfg, topic, timeout_s).values())


def group_lag(kafka_cfg: KafkaConfig, group: str, topic_names: Iterable[str], timeout_s: float = 10.0) -> int:
    """Messages of ``topic_names`` not yet committed by consumer group ``group`` (its lag).

    A partition the group never committed counts from its low watermark, so a
    group that has not started yet shows the whole backlog.
    """
    lag = 0
    consumer = Consumer(consumer_config(kafka_cfg, group, **{"enable.auto.commit": False}))
    try:
        for topic in topic_names:
            marks = _watermarks(kafka_cfg, topic, timeout_s)
            committed = consumer.committed([TopicPartition(topic, p) for p in marks], timeout=timeout_s)
            for tp in committed:
                low, high = marks[tp.partition]
                position = tp.offset if tp.offset >= 0 else low
                lag += max(0, high - position)
    finally:
        consumer.close()
    return lag


class LagProbe:
    """Per-partition lag of one consumer group, measured from the broker (committed offsets
    against high watermarks) with one long-lived client, for components that report their
    lag periodically. The probe never joins the group: it only reads its committed offsets.
    Blocking; call it from a thread, not from an event loop.
    """

    def __init__(self, kafka_cfg: KafkaConfig, group: str) -> None:
        self.group = group
        self._consumer = Consumer(consumer_config(kafka_cfg, group, **{"enable.auto.commit": False}))

    def lag(self, partitions: Iterable[tuple[str, int]], timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
        """{(topic, partition): messages after the group's committed offset}. A partition
        without a committed offset counts from its low watermark (the whole backlog)."""
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        if not wanted:
            return {}
        deadline = time.monotonic() + timeout_s
        out: dict[tuple[str, int], int] = {}
        for tp in self._consumer.committed(wanted, timeout=timeout_s):
            low, high = _watermark_with_retry(self._consumer, TopicPartition(tp.topic, tp.partition), deadline)
            start = tp.offset if tp.offset >= 0 else low
            out[(tp.topic, tp.partition)] = max(0, high - start)
        return out

    def close(self) -> None:
        self._consumer.close()
