"""Publishing operators' labels: the API's one write to Kafka (``lineguard.labels.<line>``).

The API never writes ClickHouse: a label goes to its line's topic, and ``lineguard sink labels``
writes it to the ``labels`` table like every other sink. The producer is made on the first label
(the API starts, and inspects, without a broker) and each publish waits for the broker's
acknowledgement, so a 202 means the label is durably in Kafka; no answer in time is a 503.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import Label, topics

from .data import Unavailable

log = get_logger(__name__)
DELIVERY_TIMEOUT_S = 10.0


def key_id(api_key: str) -> str:
    """A stable, non-secret name for an API key (``key-`` + 8 hex of its SHA-256): who labelled, when the
    client gave no operator name, and what the log records beside every label."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:8]


class LabelPublisher:
    """One idempotent producer (acks=all) for the process, made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                from lineguard.kafka import producer_client

                self._producer = producer_client(self.settings.kafka, **{
                    "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                    "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)})
            return self._producer

    def publish(self, label: Label, api_key_id: str) -> str:
        """Send ``label`` keyed by its frame (a frame's labels stay in order) and wait for the broker's
        acknowledgement; returns the topic. Raises Unavailable when Kafka does not take it."""
        topic = topics.labels(label.line_id)
        producer = self._get_producer()
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def delivered(error: Any, _message: Any) -> None:
            outcome["error"] = error
            done.set()

        try:
            producer.produce(topic, key=label.frame_id.encode(), value=label.encode(), on_delivery=delivered)
        except BufferError:
            raise Unavailable("Kafka: the label producer's queue is full, try again") from None
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S + 1
        while not done.is_set() and time.monotonic() < deadline:
            producer.poll(0.05)  # serves this and any other thread's delivery callbacks
        if not done.is_set() or outcome.get("error") is not None:
            reason = outcome.get("error") or f"no acknowledgement within {DELIVERY_TIMEOUT_S:.0f}s"
            raise Unavailable(f"Kafka: label for frame {label.frame_id} not delivered to {topic}: {reason}")
        log.info("label %s on frame %s (line %s) by %s with API key %s", label.label, label.frame_id,
                 label.line_id, label.operator, api_key_id)
        return topic

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(5)
