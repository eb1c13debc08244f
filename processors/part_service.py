"""``lineguard parts``: read a line's verdicts, publish one PartVerdict per part to ``lineguard.parts.<line>``.

One service per line reads every partition of the line's verdict topic (a part's views come from
several cameras, hence several partitions; run it under a supervisor that restarts it, one replica
per line). Delivery is at-least-once, like the verdicts': an input offset is committed only when
every verdict before it belongs to a part whose PartVerdict the broker has acknowledged, so a
restart re-reads the open parts and may decide a part again (consumers deduplicate on ``part_id``;
the ClickHouse ``parts`` table keeps the latest decision).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from lineguard.backoff import Backoff
from lineguard.config import Settings
from lineguard.kafka import consumer_client, coordinator_not_ready, producer_client
from lineguard.schemas import DeadLetter, SchemaError, Verdict, topics

from . import metrics as prom
from .parts import Decision, PartAssembler

log = logging.getLogger("lineguard.parts")
COMPONENT = "parts"
PUBLISH_BACKOFF = Backoff(initial_s=0.2, max_s=10.0)
WATERMARK_EVERY_S = 1.0  # how often the partitions' ends are looked up (deadlines are judged against them)


class PartService:
    def __init__(self, settings: Settings, line_id: str, group: str | None = None) -> None:
        self.settings = settings
        self.line_id = topics.check_line_id(line_id)
        self.source = topics.verdicts(line_id)
        self.target = topics.parts(line_id)
        self.consumer = consumer_client(settings.kafka, group or f"lineguard-parts-{line_id}",
                                        **{"enable.auto.commit": False})
        self.producer = producer_client(settings.kafka, **{"acks": "all", "enable.idempotence": True,
                                                           "linger.ms": 5})
        self.assembler = PartAssembler(settings.plant, line_id)
        self.counts: Counter[str] = Counter()
        self._read_upto: dict[int, int] = {}  # partition -> next offset to read
        self._committed: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._ends_at = 0.0
        self.assigned = False

    def not_ready(self) -> str | None:
        """Why ``/ready`` says no: the verdict topic's partitions are not assigned yet."""
        return None if self.assigned else f"waiting for {self.source}"

    def _assign(self) -> list[TopicPartition]:
        metadata = self.consumer.list_topics(self.source, timeout=30)
        described = metadata.topics.get(self.source)
        if described is None or described.error is not None or not described.partitions:
            raise RuntimeError(f"topic {self.source} does not exist (start a processor for line {self.line_id})")
        wanted = [TopicPartition(self.source, p) for p in sorted(described.partitions)]
        committed = self._committed_offsets(wanted)
        for tp in committed:
            if tp.offset >= 0:
                self._committed[tp.partition] = tp.offset
        self.consumer.assign(committed)  # invalid (none committed) -> auto.offset.reset: earliest
        self.assigned = True
        return wanted

    def _committed_offsets(self, wanted: list[TopicPartition], timeout_s: float = 60.0) -> list[TopicPartition]:
        """The group's offsets, waiting while a new cluster has no group coordinator yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.consumer.committed(wanted, timeout=30)
            except KafkaException as exc:
                if not coordinator_not_ready(exc.args[0]) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run(self, stop_event: threading.Event | None = None, idle_exit_s: float | None = None) -> Counter[str]:
        stop_event = stop_event or threading.Event()
        partitions = self._assign()
        last_message = time.monotonic()
        log.info("deciding parts of line %s: %s -> %s (views %s, deadline %d ms)", self.line_id, self.source,
                 self.target, self.assembler.line.part_views or "any", self.assembler.line.part_wait_ms)
        try:
            while not stop_event.is_set():
                messages = self.consumer.consume(500, timeout=0.2)
                decisions: list[Decision] = []
                for message in messages:
                    if message.error():
                        if message.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer error: %s", message.error())
                        continue
                    last_message = time.monotonic()
                    decisions += self._take(message)
                self._look_at_ends(partitions)
                decisions += self.assembler.expire()
                self._publish(decisions)
                self._commit()
                if idle_exit_s is not None and not self.assembler.open and time.monotonic() - last_message > idle_exit_s:
                    break
        finally:
            self._commit()
            self.producer.flush(30)
            self.consumer.close()
        return self.counts

    def _take(self, message) -> list[Decision]:  # noqa: ANN001 - a confluent Message
        partition, offset = message.partition(), message.offset()
        self._read_upto[partition] = offset + 1
        try:
            verdict = Verdict.decode(message.value(), max_bytes=self.settings.kafka.message_max_bytes)
        except SchemaError as exc:
            self._dead_letter(message, exc)
            return []
        return self.assembler.add(verdict, partition, offset)

    def _look_at_ends(self, partitions: list[TopicPartition]) -> None:
        """Tell the assembler which partitions have nothing more to read (event time cannot advance there)."""
        now = time.monotonic()
        if now - self._ends_at >= WATERMARK_EVERY_S:
            self._ends_at = now
            for tp in partitions:
                try:
                    self._ends[tp.partition] = self.consumer.get_watermark_offsets(tp, timeout=5)[1]
                except Exception as exc:  # noqa: BLE001 - a broker away: judge again next time
                    log.debug("end of %s[%d] unknown: %s", tp.topic, tp.partition, exc)
        for tp in partitions:
            end = self._ends.get(tp.partition)
            position = self._read_upto.get(tp.partition, self._committed.get(tp.partition, 0))
            self.assembler.set_caught_up(tp.partition, end is not None and position >= end)

    def _publish(self, decisions: list[Decision]) -> None:
        """Send every decision and wait until the broker has them all (retrying with back-off)."""
        if not decisions:
            return
        for decision in decisions:
            part = decision.part
            self._send(self.target, part.part_id.encode(), part.encode())
            self.counts["decided"] += 1
            self.counts[part.reason] += 1
            prom.PARTS_DECIDED.labels(self.line_id, part.reason).inc()
            if part.missing_views:
                self.counts["missing_views"] += 1
            if part.late:
                self.counts["late"] += 1
                prom.LATE_PARTS.labels(self.line_id).inc()
            if part.is_defective:
                self.counts["defective"] += 1

    def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        attempt = 0
        while True:
            failures: list[KafkaError] = []
            self.producer.produce(topic, value=value, key=key,
                                  on_delivery=lambda err, _msg: failures.append(err) if err else None)
            remaining = self.producer.flush(60)
            if remaining == 0 and not failures:
                return
            delay = PUBLISH_BACKOFF.delay(attempt)
            attempt += 1
            self.counts["publish_retries"] += 1
            log.warning("publishing to %s failed (%s); retrying in %.1fs", topic, failures or "timed out", delay)
            time.sleep(delay)

    def _dead_letter(self, message, error: SchemaError) -> None:  # noqa: ANN001
        letter = DeadLetter.build(
            source_topic=message.topic(), partition=message.partition(), offset=message.offset(),
            reason=error.reason, error=str(error), raw=message.value() or b"",
            max_raw_bytes=self.settings.limits.deadletter_max_raw_bytes, failed_at_ns=time.time_ns(),
            component=COMPONENT, line_id=self.line_id,
        )
        self._send(topics.DEADLETTER, None, letter.encode())
        self.counts["deadletter"] += 1

    def _commit(self) -> None:
        """Commit up to the first offset an undecided part still holds (everything before it is published)."""
        held = self.assembler.open_offsets()
        offsets = []
        for partition, upto in self._read_upto.items():
            commit_at = min(upto, held.get(partition, upto))
            if commit_at > self._committed.get(partition, -1):
                offsets.append(TopicPartition(self.source, partition, commit_at))
                self._committed[partition] = commit_at
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:  # noqa: BLE001 - committed again with the next decisions
                log.warning("commit failed: %s", exc)
                for tp in offsets:
                    self._committed.pop(tp.partition, None)
