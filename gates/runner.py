"""The gate runner: consume PartVerdicts, write the timely ones to the PLC, commit what is settled.

One loop, one thread, so the order of decisions on a line is the order they were read:

* A verdict flagged ``late``, or already past its ``deadline_at_ns`` when read, is dropped
  (``dropped_late``): the part has left the gate, acting on it would hit another part.
* A timely one joins a bounded :class:`~.decisions.DecisionQueue` and is written as soon as the
  PLC link is up. While the PLC is away the queue holds decisions; a decision whose deadline
  passes while it waits is dropped (``dropped_expired``). When the queue is full, Kafka is paused,
  so nothing is dropped for room.
* A failed write or heartbeat closes the link; it is reopened with the back-off of
  :mod:`lineguard.backoff` (``gate.reconnect_initial_ms`` .. ``reconnect_max_ms``), and the
  decision that failed is sent again with the same sequence number.
* An offset is committed only once its decision and every one before it on the partition was
  sent or deliberately dropped (:class:`~.decisions.OffsetLedger`): nothing is lost silently.
  Decisions still queued at shutdown or at a rebalance are not committed: read again, they are
  written if still timely, else counted as late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lineguard import kafka
from lineguard.backoff import Backoff
from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import PartVerdict, SchemaError, topics

from . import metrics as prom
from .decisions import Decision, DecisionQueue, OffsetLedger, PartitionKey, timely
from .metrics import GateCounts
from .plc import PlcLink, PlcUnavailable

log = get_logger(__name__)

_POLL_SLICE_S = 0.05  # how long one Kafka poll may block: bounds how late a queued decision is retried


class GateRunner:
    def __init__(self, settings: Settings, link: PlcLink, *, lines: Sequence[str] | None = None,
                 group_id: str | None = None) -> None:
        self.settings = settings
        self.cfg = settings.gate
        self.link = link
        self.kind = link.kind
        self.lines = [topics.check_line_id(line) for line in (lines or self.cfg.lines)]
        self.group_id = group_id or self.cfg.consumer_group or f"lineguard-gate-{self.kind}"
        self.subscription = [topics.parts(line) for line in self.lines]
        self.queue = DecisionQueue(self.cfg.queue_size)
        self.ledger = OffsetLedger()
        self.counts = GateCounts()
        self.backoff = Backoff(self.cfg.reconnect_initial_ms / 1000, self.cfg.reconnect_max_ms / 1000)
        self.connected = False
        self._failed_connects = 0
        self._next_connect_at = 0.0
        self._next_heartbeat_at = 0.0
        self._paused = False
        self._consumer: Consumer | None = None
        self._m_connected = prom.CONNECTED.labels(self.kind)
        self._m_queued = prom.QUEUED.labels(self.kind)
        self._m_connected.set(0)

    # ---- the loop ---------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> GateCounts:
        """Run until ``stop_event`` is set; commit what is settled and close the link before returning."""
        stop = stop_event or threading.Event()
        consumer = kafka.consumer_client(self.settings.kafka, self.group_id, **{
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "on_commit": self._on_commit,
        })
        consumer.subscribe(self.subscription, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self._consumer = consumer
        log.info("gate %s: group %s reading %s", self.kind, self.group_id, self.subscription)
        try:
            while not stop.is_set():
                self._drop_expired()
                self._keep_connected()
                self._send_queued()
                self._heartbeat_when_due()
                self._follow_queue_room(consumer)
                message = consumer.poll(self._poll_timeout())
                if message is not None:
                    self._accept(consumer, message)
                self._commit(consumer)
        finally:
            self._shutdown(consumer)
        return self.counts

    def not_ready(self) -> str | None:
        """Why the gate is not writing decisions (``/ready``)."""
        if self._consumer is None:
            return "not consuming"
        if not self.connected:
            return f"the PLC ({self.kind}) is not connected; {len(self.queue)} decisions queued"
        return None

    def _poll_timeout(self) -> float:
        return 0.0 if self.connected and len(self.queue) else _POLL_SLICE_S

    # ---- Kafka -> queue ---------------------------------------------------------

    def _accept(self, consumer: Consumer, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("gate %s: consumer error: %s", self.kind, error)
            return
        partition: PartitionKey = (message.topic(), message.partition())
        if self.queue.full:  # fetched before the pause took effect: read it again after the resume
            consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))
            return
        self.counts.consumed += 1
        self.ledger.read(partition, message.offset())
        line = topics.line_of(message.topic())
        try:
            verdict = PartVerdict.decode(message.value())
        except SchemaError as exc:
            log.warning("gate %s: %s[%d]@%d is not a PartVerdict (%s): skipped", self.kind, *partition,
                        message.offset(), exc)
            self._settle_dropped(partition, message.offset(), line, "invalid")
            return
        if not timely(verdict):
            self._settle_dropped(partition, message.offset(), line, "late")
            return
        self.queue.put(Decision.of(verdict, message.topic(), message.partition(), message.offset()))
        self._m_queued.set(len(self.queue))

    def _follow_queue_room(self, consumer: Consumer) -> None:
        """Pause every assigned partition while the queue is full; resume once there is room."""
        if self.queue.full and not self._paused:
            consumer.pause(consumer.assignment())
            self._paused = True
            log.warning("gate %s: %d decisions queued for the PLC: reading paused", self.kind, len(self.queue))
        elif self._paused and not self.queue.full:
            consumer.resume(consumer.assignment())
            self._paused = False

    # ---- queue -> PLC -----------------------------------------------------------

    def _send_queued(self) -> None:
        while self.connected and (decision := self.queue.head()) is not None:
            if decision.expired():
                self.queue.pop()
                self._settle_dropped(decision.partition, decision.offset, decision.line_id, "expired")
                continue
            try:
                self.link.write(decision)
            except PlcUnavailable as exc:
                self._lost(exc)
                return
            self.queue.pop()
            self.ledger.settle(decision.partition, decision.offset)
            self.counts.sent += 1
            prom.SENT.labels(self.kind, decision.line_id).inc()
            if decision.deadline_at_ns is not None:
                prom.SLACK.labels(self.kind).observe(max(0.0, (decision.deadline_at_ns - time.time_ns()) / 1e9))
        self._m_queued.set(len(self.queue))

    def _drop_expired(self) -> None:
        """While the PLC is away, decisions whose deadline passed are dropped (and their offsets settled)."""
        for decision in self.queue.drop_expired():
            self._settle_dropped(decision.partition, decision.offset, decision.line_id, "expired")
        self._m_queued.set(len(self.queue))

    def _settle_dropped(self, partition: PartitionKey, offset: int, line: str, reason: str) -> None:
        self.ledger.settle(partition, offset)
        if reason == "late":
            self.counts.dropped_late += 1
        elif reason == "expired":
            self.counts.dropped_expired += 1
        else:
            self.counts.invalid += 1
        prom.DROPPED.labels(self.kind, line, reason).inc()

    def _heartbeat_when_due(self) -> None:
        now = time.monotonic()
        if not self.connected or now < self._next_heartbeat_at:
            return
        try:
            self.link.heartbeat(self.counts.heartbeats + 1)
        except PlcUnavailable as exc:
            self._lost(exc)
            return
        self.counts.heartbeats += 1
        self._next_heartbeat_at = now + self.cfg.heartbeat_s
        prom.HEARTBEATS.labels(self.kind).inc()
        prom.LAST_HEARTBEAT.labels(self.kind).set(time.time())

    # ---- the link: connect, lose, reconnect with back-off -----------------------

    def _keep_connected(self) -> None:
        if self.connected or time.monotonic() < self._next_connect_at:
            return
        try:
            self.link.connect()
        except PlcUnavailable as exc:
            prom.CONNECT_FAILURES.labels(self.kind).inc()
            delay = self.backoff.delay(self._failed_connects)
            self._failed_connects += 1
            self._next_connect_at = time.monotonic() + delay
            # The first failure of an outage is a warning, the retries are not worth one each.
            level = log.warning if self._failed_connects == 1 else log.debug
            level("gate %s: cannot connect (%s); %d decisions queued; retrying in %.1fs",
                  self.kind, exc, len(self.queue), delay)
            return
        if self._failed_connects:
            log.info("gate %s: connected after %d failed attempts; %d decisions queued",
                     self.kind, self._failed_connects, len(self.queue))
        else:
            log.info("gate %s: connected", self.kind)
        self.connected = True
        self._failed_connects = 0
        self._next_heartbeat_at = 0.0  # the PLC hears from the gate at once
        self.counts.connects += 1
        self._m_connected.set(1)

    def _lost(self, exc: PlcUnavailable) -> None:
        log.warning("gate %s: lost the PLC (%s); %d decisions queued, reconnecting", self.kind, exc,
                    len(self.queue))
        self.link.close()
        self.connected = False
        self.counts.disconnects += 1
        self._m_connected.set(0)
        self._next_connect_at = time.monotonic() + self.backoff.delay(0)

    # ---- commits and rebalances -------------------------------------------------

    def _commit(self, consumer: Consumer, asynchronous: bool = True) -> None:
        offsets = self.ledger.committable()
        if not offsets:
            return
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                            asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("gate %s: commit failed (%s); retried with the next one", self.kind, exc)
            return
        self.ledger.mark_committed(offsets)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            log.warning("gate %s: commit refused: %s", self.kind, err or failed[0].error)
            self.ledger.uncommit({(tp.topic, tp.partition) for tp in partitions})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("gate %s: assigned %s", self.kind, [f"{tp.topic}[{tp.partition}]" for tp in partitions])
        self._paused = False  # new partitions start fetching; the loop pauses them again if the queue is full

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is settled; the queued decisions of the partitions taken go (their new owner reads them)."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(consumer, asynchronous=False)
        dropped = self.queue.drop_partitions(revoked)
        self.ledger.forget(revoked)
        if dropped:
            log.info("gate %s: %d queued decisions left to the partitions' new owner", self.kind, len(dropped))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Taken without a revoke (session timeout): no commit is possible; their new owner reads them."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.queue.drop_partitions(lost)
        self.ledger.forget(lost)

    def _shutdown(self, consumer: Consumer) -> None:
        try:
            self._commit(consumer, asynchronous=False)
        finally:
            if self.queue:
                log.warning("gate %s: stopping with %d decisions unsent (uncommitted: read again at restart)",
                            self.kind, len(self.queue))
            consumer.close()
            self._consumer = None
            self.link.stop()
            self.connected = False
            self._m_connected.set(0)
