"""Helpers for tests that run lineguard components as real processes against the local stack."""

from __future__ import annotations

import time
import uuid
from typing import Callable, TypeVar

from confluent_kafka import Consumer, TopicPartition

from lineguard.config import KafkaConfig
from lineguard.components import Component, component_env  # noqa: F401 - re-exported for the tests
from lineguard.kafka_admin import consumer_config

T = TypeVar("T")


def read_topics(kafka: KafkaConfig, topic_names: list[str], decode: Callable[[bytes], T], expect: int,
                timeout_s: float = 120.0, settle_s: float = 2.0) -> list[T]:
    """Read every message of ``topic_names`` from the beginning with a throwaway group.

    Returns once ``expect`` messages were read and nothing more arrived for
    ``settle_s`` (so an excess shows up as a count above ``expect``), or at
    the timeout with what was read.
    """
    consumer = Consumer(consumer_config(kafka, f"test-reader-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False}))
    consumer.subscribe(topic_names)
    out: list[T] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(out) >= expect and time.monotonic() - last_new > settle_s:
                    break
                continue
            if msg.error():
                continue
            out.append(decode(msg.value()))
            last_new = time.monotonic()
    finally:
        consumer.close()
    return out


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def committed_offsets(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(consumer_config(kafka, group, **{"enable.auto.commit": False}))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in tps]
    finally:
        consumer.close()
