"""The dead-letter outbox: messages a sink can never write, produced to ``lineguard.deadletter``.

A source offset is committed only after its dead letter is on the broker, so the runner calls
:meth:`DeadLetterOutbox.confirm` before each commit: it waits for every delivery and raises
(for the runner to retry) if any failed, after queueing the failed ones again.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from lineguard import kafka
from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import DeadLetter, topics

from . import metrics as prom

log = get_logger(__name__)


class DeadLetterCounts(Protocol):
    dead_lettered: int


class DeadLetterOutbox:
    """Produces dead letters for one sink and confirms their delivery."""

    def __init__(self, settings: Settings, kind: str, counts: DeadLetterCounts) -> None:
        self.settings = settings
        self.kind = kind
        self.counts = counts
        self._producer: Producer | None = None  # opened on the first dead letter
        self._unconfirmed = 0
        self._errors: list[str] = []
        self._redo: list[tuple[bytes, bytes | None, str, str]] = []  # failed deliveries, to send again

    def send(self, message: Message, reason: str, error: str, frame_id: str | None = None) -> None:
        """Dead-letter ``message`` (the source record) with ``reason``; confirmed by :meth:`confirm`."""
        topic = message.topic()
        try:
            line_id: str | None = topics.line_of(topic)
        except ValueError:
            line_id = None
        record = DeadLetter.build(
            source_topic=topic,
            partition=message.partition(),
            offset=message.offset(),
            reason=reason,
            error=error,
            raw=message.value() or b"",
            max_raw_bytes=self.settings.limits.deadletter_max_raw_bytes,
            failed_at_ns=time.time_ns(),
            component=f"sink-{self.kind}",
            frame_id=frame_id,
            line_id=line_id,
        )
        log.warning("sink %s: dead-lettering %s[%d]@%d: %s (%s)", self.kind, topic,
                    message.partition(), message.offset(), reason, error)
        # The metric's line: the source topic's, or the topic itself for one that names no line.
        self._produce(record.encode(), message.key(), line_id or topic, reason)

    def _produce(self, payload: bytes, key: bytes | None, line: str, reason: str) -> None:
        if self._producer is None:
            self._producer = kafka.producer_client(self.settings.kafka)

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            self._unconfirmed -= 1
            if err is None:
                self.counts.dead_lettered += 1
                prom.DEAD_LETTERS.labels(self.kind, line, reason).inc()
            else:
                # Kept to re-send: the source offset must not be committed without it.
                self._errors.append(str(err))
                self._redo.append((payload, key, line, reason))

        self._producer.produce(topics.DEADLETTER, value=payload, key=key, on_delivery=delivered)
        self._unconfirmed += 1
        self._producer.poll(0)

    def confirm(self) -> None:
        """Wait until every dead letter is on the broker; raise (to retry) if any failed."""
        if self._producer is None:
            return
        self._producer.flush(30)
        redo, self._redo = self._redo, []
        if self._unconfirmed > 0 or redo:
            errors, self._errors = self._errors, []
            for payload, key, line, reason in redo:
                self._produce(payload, key, line, reason)
            raise KafkaException(f"dead-letter delivery incomplete: {errors or 'timed out'}")

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
