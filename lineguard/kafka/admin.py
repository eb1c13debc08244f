"""Topics: create each line's frame, verdict, heatmap, part, label and shadow topics and the dead-letter topic.

Replication follows ``kafka.replication_factor`` / ``kafka.min_insync_replicas``;
"auto" derives them from the brokers alive when the topics are created: one
broker gives 1 and 1, two give 2 and 1, three or more give 3 and 2, so one
broker may be lost without losing an acknowledged (acks=all) write or
stopping writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from lineguard.config import KafkaConfig
from lineguard.kafka.clients import admin_client, topic_max_message_bytes
from lineguard.schemas import topics


def replication(kafka_cfg: KafkaConfig, live_brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics, "auto" resolved from ``live_brokers``."""
    rf = kafka_cfg.replication_factor
    if rf == "auto":
        rf = max(1, min(3, live_brokers))
    min_isr = kafka_cfg.min_insync_replicas
    if min_isr == "auto":
        min_isr = 2 if rf >= 3 else 1
    return rf, min_isr


def _wanted_topics(kafka_cfg: KafkaConfig, line_ids: Iterable[str], live_brokers: int) -> list[NewTopic]:
    rf, min_isr = replication(kafka_cfg, live_brokers)
    size = {"max.message.bytes": str(topic_max_message_bytes(kafka_cfg)), "min.insync.replicas": str(min_isr)}
    retained = {**size, "retention.ms": str(kafka_cfg.verdict_retention_ms)}
    parts = kafka_cfg.frame_partitions
    wanted: list[NewTopic] = []
    for line_id in dict.fromkeys(line_ids):  # de-duplicated, order kept
        # Verdict and heatmap topics get as many partitions as frames so sinks scale like processors.
        frames_cfg = {**size, "retention.ms": str(kafka_cfg.frames_retention_ms)}
        wanted.append(NewTopic(topics.frames(line_id), parts, rf, config=frames_cfg))
        wanted.append(NewTopic(topics.verdicts(line_id), parts, rf, config=dict(retained)))
        wanted.append(NewTopic(topics.heatmaps(line_id), parts, rf, config=dict(size)))
        wanted.append(NewTopic(topics.parts(line_id), parts, rf, config=dict(retained)))
        # Labels are few (an operator's clicks) but ground truth: kept like verdicts, keyed by frame.
        wanted.append(NewTopic(topics.labels(line_id), parts, rf, config=dict(retained)))
        # A shadow candidate's verdicts: kept like verdicts, read only by `lineguard sink shadow`.
        wanted.append(NewTopic(topics.shadow(line_id), parts, rf, config=dict(retained)))
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
    live_brokers = len(admin.list_topics(timeout=timeout_s).brokers)
    wanted = _wanted_topics(kafka_cfg, line_ids, live_brokers)
    futures = admin.create_topics(wanted, request_timeout=timeout_s, operation_timeout=timeout_s)
    created = [name for name, future in futures.items() if _created(future, timeout_s)]
    _wait_for_leaders(admin, [t.topic for t in wanted], timeout_s)
    return created


def ensure_compacted_topic(kafka_cfg: KafkaConfig, name: str, timeout_s: float = 30.0) -> bool:
    """Create ``name`` as a one-partition compacted topic where missing (a record per key: markers,
    not a stream); True if created. Replicated as the other topics are."""
    admin = admin_client(kafka_cfg)
    rf, min_isr = replication(kafka_cfg, len(admin.list_topics(timeout=timeout_s).brokers))
    wanted = NewTopic(name, 1, rf, config={"cleanup.policy": "compact", "min.insync.replicas": str(min_isr)})
    futures = admin.create_topics([wanted], request_timeout=timeout_s, operation_timeout=timeout_s)
    created = _created(futures[name], timeout_s)
    _wait_for_leaders(admin, [name], timeout_s)
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


_COORDINATOR_NOT_READY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                          KafkaError.COORDINATOR_LOAD_IN_PROGRESS}


def coordinator_not_ready(error: KafkaError) -> bool:
    """True for the errors a group request gets while its coordinator is still being chosen or
    loaded (a new cluster, a moved ``__consumer_offsets`` leader): ask again, it is not a failure.
    librdkafka does not mark NOT_COORDINATOR retriable."""
    return error.retriable() or error.code() in _COORDINATOR_NOT_READY
