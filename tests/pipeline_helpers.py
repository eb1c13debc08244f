"""Helpers for tests that run lineguard components as real processes against the local stack."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from lineguard.config import KafkaConfig
from lineguard.components import Component, component_env  # noqa: F401 - re-exported for the tests
from lineguard.harness import wait_for  # noqa: F401 - re-exported for the tests
from lineguard.kafka import count_messages, read_topic

T = TypeVar("T")


def read_topics(kafka: KafkaConfig, topic_names: list[str], decode: Callable[[bytes], T], expect: int,
                timeout_s: float = 120.0, settle_s: float = 2.0) -> list[T]:
    """Every message of ``topic_names``, decoded, once the topics hold ``expect`` messages and
    nothing more arrived for ``settle_s`` (so an excess shows up as a count above ``expect``),
    or at the timeout with what they hold."""
    deadline = time.monotonic() + timeout_s
    held, settled_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_held = sum(count_messages(kafka, name) for name in topic_names)
        if now_held != held:
            held, settled_since = now_held, time.monotonic()
        elif held >= expect and time.monotonic() - settled_since >= settle_s:
            break
        time.sleep(0.5)
    return [decode(record.value) for record in read_topic(kafka, topic_names)]
