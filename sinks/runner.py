"""The sink runner: consume, batch, write through a :class:`~lineguard.sinks.writer.Writer`, commit.

Delivery is at-least-once and the writes are idempotent (verdict replays collapse in
ClickHouse, heatmap keys are overwritten), so the runner keeps one rule: **an offset is
committed only after everything before it was written** (or dead-lettered). Concretely:

* Messages are gathered into one batch, tracked per partition, until ``sinks.batch_size``
  messages or ``sinks.flush_interval_ms`` since the batch's first message.
* A message the writer's ``decode`` rejects with :class:`SchemaError` is dead-lettered
  (``lineguard.deadletter``) with the error's reason, once; it is never retried.
* A failed ``write`` is retried with the back-off of :mod:`lineguard.backoff`
  (``retry_initial_ms`` .. ``retry_max_ms``) until it succeeds or the sink is stopped; nothing
  is committed meanwhile. While retrying, the assigned partitions are paused and the consumer
  is polled between waits, so it stays in its group and answers rebalances.
  ``max.poll.interval.ms`` is still 10 minutes, because one slow ``write`` does not poll.
* A :class:`PermanentWriteError` (the store refuses records for good) is not retried: the
  batch is written in halves until each refused record stands alone, and those are
  dead-lettered with the store's reason; the rest of the batch is written, the stream goes on.
* After a write, and after the batch's dead letters are confirmed, exactly the offsets taken
  are committed, asynchronously (:mod:`.commits`); on shutdown the runner polls up to
  ``sinks.rejoin_timeout_s`` for the answers still out.
* A consumer whose coordinator stops answering is replaced (:mod:`.watchdog`, :mod:`.consumer`).
* On partition revocation the batch is flushed before the partitions go, with one attempt;
  if that fails, the revoked partitions' messages are dropped uncommitted, and their new
  owner reads them again.
* Lag (messages after the committed offset, per partition held) is measured with
  ``lineguard.kafka.LagTracker`` every ``sinks.lag_report_s``, also while a write is being
  retried, and exported as ``lineguard_sink_consumer_lag``; while the store is failing it is
  logged too, so an outage shows how far behind the sink is.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lineguard import kafka
from lineguard.backoff import Backoff
from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import SchemaError

from . import metrics as prom
from .batch import Batch, PartitionKey, Record
from .commits import CommitTracker
from .consumer import GroupMember, close_in_background
from .deadletters import DeadLetterOutbox
from .errors import PermanentWriteError
from .metrics import SinkMetrics
from .retry import Retrier, SinkStopped
from .watchdog import StuckConsumerWatchdog
from .writer import Writer

log = get_logger(__name__)

T = TypeVar("T")
# How one write attempt is run: with retries (the loop) or once (a rebalance must not wait).
Attempts = Callable[[Callable[[], None], str], None]

# How long one poll may block: bounds how late stop requests, flush deadlines and
# idle exits are noticed.
_POLL_SLICE_S = 0.2
# Joining a group can take seconds (the broker's group.initial.rebalance.delay.ms, 3 s by
# default, then the assignment): an idle exit waits at least this long for a first assignment.
_FIRST_ASSIGNMENT_GRACE_S = 15.0


class SinkRunner(Generic[T]):
    """Runs one writer against its topics: consume, decode, batch, write, dead-letter, commit."""

    def __init__(
        self,
        settings: Settings,
        writer: Writer[T],
        *,
        lines: Sequence[str] | None = None,
        group_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.sinks
        self.writer = writer
        self.kind = writer.kind
        self.group_id = group_id or f"lineguard-sink-{self.kind}"
        # A list of lines subscribes to their topics; None follows every line,
        # including ones created later (regex subscription).
        self.subscription: list[str] = (
            [writer.topic_for_line(line) for line in lines] if lines else [writer.topic_pattern()]
        )
        self.metrics = SinkMetrics()
        backoff = Backoff(self.cfg.retry_initial_ms / 1000, self.cfg.retry_max_ms / 1000)
        self.retry = Retrier(self.kind, backoff, self.metrics, lambda: self._stop.is_set(), self._wait_paused)
        self.commits = CommitTracker(self.kind, self.metrics)
        self.dead_letters = DeadLetterOutbox(settings, self.kind, self.metrics)
        self.watchdog = StuckConsumerWatchdog(self.cfg.rejoin_timeout_s, self.commits)
        self.lag = kafka.LagTracker(settings.kafka, self.group_id, gauge=prom.CONSUMER_LAG,
                                    gauge_labels=(self.kind,))
        self.member = GroupMember(settings, self.group_id, self.subscription, f"sink-{self.kind}", {
            "on_commit": self.commits.on_commit, "on_assign": self._on_assign,
            "on_revoke": self._on_revoke, "on_lost": self._on_lost,
        }, consumer_overrides)
        self._batch: Batch[T] = Batch()
        self._lag_measured_at = 0.0
        self._stop = threading.Event()
        self._in_retry = False
        self._early: list[Message] = []  # polled while paused for a retry
        self._assigned_at: float | None = None
        self._started_at = self._last_message_at = time.monotonic()
        self._m_consumed = prom.CONSUMED.labels(self.kind)
        self._m_written = prom.WRITTEN.labels(self.kind)
        self._m_write_seconds = prom.WRITE_SECONDS.labels(self.kind)
        self._m_uncommitted = prom.UNCOMMITTED.labels(self.kind)

    # ---- the loop ---------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event | None = None,
        idle_exit_s: float | None = None,
        max_messages: int | None = None,
    ) -> SinkMetrics:
        """Consume until ``stop_event`` is set, ``idle_exit_s`` passed without a message
        (counted from the last partition assignment; before the first one, at least
        15 s are given to join the group), or
        ``max_messages`` were consumed. Flushes and commits before returning."""
        stop = stop_event or threading.Event()
        self._stop = stop
        consumer = self.member.open()
        self._started_at = self._last_message_at = time.monotonic()
        log.info("sink %s: group %s subscribing to %s", self.kind, self.group_id, self.subscription)
        try:
            while not stop.is_set():
                budget = self.cfg.batch_size - len(self._batch)
                if max_messages is not None:
                    budget = min(budget, max_messages - self.metrics.consumed)
                    if budget <= 0:
                        break
                messages = self._take_early(budget) or consumer.consume(
                    num_messages=max(budget, 1), timeout=self._poll_timeout()
                )
                for message in messages:
                    self._accept(message)
                if self._batch.due(self.cfg.batch_size, self.cfg.flush_interval_ms / 1000):
                    self._flush()
                self._maybe_measure_lag()
                consumer = self._maybe_reopen(consumer)
                if idle_exit_s is not None and not messages and self._idle_expired(idle_exit_s):
                    break
            self._flush()
        except SinkStopped:
            log.warning("sink %s: stopped while a write was failing; %d messages left uncommitted",
                        self.kind, len(self._batch))
            self._forget(set(self._batch.offsets))  # so closing does not try to flush them again
        finally:
            self._shutdown()
        return self.metrics

    def not_ready(self) -> str | None:
        """Why this sink is not consuming (``/ready``): not started, joining, partitions taken, stuck or retrying."""
        if self._stop.is_set() or self.member.consumer is None:
            return "not consuming"
        if self._assigned_at is None:
            return "joining the consumer group"
        if self._in_retry:
            return "a write is failing (retrying, partitions paused)"
        return self.watchdog.stuck() or self.watchdog.waiting()

    def _maybe_reopen(self, consumer: Consumer) -> Consumer:
        """A consumer whose group coordinator stopped answering is closed and a new one subscribes;
        messages it had not committed are read again by the new one."""
        stuck = self.watchdog.stuck()
        if stuck is None:
            return consumer
        log.warning("sink %s: %s; reopening the consumer", self.kind, stuck)
        self.metrics.reopens += 1
        self._forget(set(self._batch.offsets))
        self.watchdog.reset()
        self.commits.forget_unanswered()  # the old consumer's answers will not come
        return self.member.replace()

    def _take_early(self, budget: int) -> list[Message]:
        taken, self._early = self._early[:budget], self._early[budget:]
        return taken

    def _poll_timeout(self) -> float:
        if self._batch.started is None:
            return _POLL_SLICE_S
        due_in = self._batch.started + self.cfg.flush_interval_ms / 1000 - time.monotonic()
        return max(0.0, min(_POLL_SLICE_S, due_in))

    def _idle_expired(self, idle_exit_s: float) -> bool:
        now = time.monotonic()
        if self._assigned_at is None:  # still joining, or nothing matches the subscription
            return now - self._started_at >= max(idle_exit_s, _FIRST_ASSIGNMENT_GRACE_S)
        return now - max(self._last_message_at, self._assigned_at) >= idle_exit_s

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal():
                raise KafkaException(error)
            log.warning("sink %s: consumer error: %s", self.kind, error)
            return
        self.metrics.consumed += 1
        self._m_consumed.inc()
        self._last_message_at = time.monotonic()
        try:
            item = self.writer.decode(message.value())
        except SchemaError as exc:
            self.dead_letters.send(message, exc.reason, str(exc))
            self._batch.add(message, None, written=False)
        else:
            self._batch.add(message, item)
        self._m_uncommitted.set(len(self._batch))

    # ---- flush: write (with retry, refused records dead-lettered), then commit ------------

    def _flush(self) -> None:
        if not self._batch.offsets:
            self._batch.started = None
            return
        if self._batch.records:
            self._write_records(self._batch.records, self.retry)
        self.retry(self.dead_letters.confirm, "dead-letter delivery")
        self._commit()

    def _write_records(self, records: list[Record[T]], attempts: Attempts) -> None:
        """Write ``records``. When the store refuses some for good, write them in halves until
        each refused record stands alone, and dead-letter it: the good ones are written."""
        chunks = [list(records)]
        total = len(records)
        while chunks:
            chunk = chunks.pop()
            try:
                attempts(functools.partial(self._write, chunk), "write")
            except PermanentWriteError as exc:
                live = [r for r in chunk if self._batch.holds(r.partition)]
                if len(live) == 1:
                    record = live[0]
                    self.dead_letters.send(record.message, exc.reason, str(exc),
                                           frame_id=getattr(record.item, "frame_id", None))
                    self._batch.discard(record)  # a later flush must not write it again
                elif live:
                    if len(live) == total:
                        log.warning("sink %s: the store refused a batch of %d for good (%s); writing it in "
                                    "parts to dead-letter only the refused records", self.kind, len(live), exc)
                    half = len(live) // 2
                    chunks += [live[half:], live[:half]]  # the first half is written first

    def _write(self, records: list[Record[T]]) -> None:
        # Filtered on every attempt: a rebalance during the back-off may have taken some
        # partitions' messages out of the batch.
        live = [r for r in records if self._batch.holds(r.partition)]
        if not live:
            return
        started = time.monotonic()
        self.writer.write([r.item for r in live])
        self._m_write_seconds.observe(time.monotonic() - started)
        self.metrics.written += len(live)
        self._m_written.inc(len(live))

    def _wait_paused(self, seconds: float) -> None:
        """Back off without leaving the group: pause, poll in short slices, resume."""
        consumer = self.member.consumer
        if consumer is None:
            self._stop.wait(seconds)
            return
        self._in_retry = True
        assignment = consumer.assignment()
        try:
            if assignment:
                consumer.pause(assignment)
            deadline = time.monotonic() + seconds
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = consumer.poll(min(left, _POLL_SLICE_S))
                if message is not None:
                    # Paused partitions deliver nothing new; this is an error event or a
                    # message from a partition assigned meanwhile: keep it for later.
                    self._early.append(message)
                self._maybe_measure_lag()
        finally:
            self._in_retry = False
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)

    def _commit(self) -> None:
        offsets = dict(self._batch.offsets)
        self._batch.clear()
        self._m_uncommitted.set(0)
        if self.member.consumer is not None:
            self.commits.commit(self.member.consumer, offsets)

    def _maybe_measure_lag(self) -> None:
        if time.monotonic() - self._lag_measured_at >= self.cfg.lag_report_s:
            self._measure_lag()

    def _measure_lag(self, timeout_s: float = 2.0) -> None:
        consumer = self.member.consumer
        self._lag_measured_at = time.monotonic()
        if consumer is None:
            return
        try:
            held = [(tp.topic, tp.partition) for tp in consumer.assignment()]
            by_partition = self.lag.measure(held, timeout_s=timeout_s)
        except KafkaException as exc:
            log.debug("sink %s: lag unavailable: %s", self.kind, exc)
            return
        lag = {f"{topic}[{partition}]": value for (topic, partition), value in by_partition.items()}
        self.metrics.lag = lag  # only partitions this sink holds now
        failing_since = self.retry.failing_since
        if failing_since is not None:
            log.warning("sink %s: store failing for %.0fs; lag %d messages on %d partitions (%d in the failing batch)",
                        self.kind, time.monotonic() - failing_since, sum(lag.values()), len(lag),
                        len(self._batch))

    # ---- rebalances -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        self.watchdog.assigned()
        log.info("sink %s: assigned %s", self.kind, [f"{p.topic}[{p.partition}]" for p in partitions])
        if self._in_retry and partitions:
            consumer.pause(partitions)  # no new work while the current batch is failing

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.watchdog.unassigned()
        revoked = {(p.topic, p.partition) for p in partitions}
        if revoked:
            self.metrics.revocations += 1
        if not revoked & set(self._batch.offsets):
            return
        if not self._in_retry:
            # Flush while the partitions are still ours, with one attempt only: a
            # rebalance must not wait on a failing store.
            try:
                self._write_records(self._batch.records, lambda operation, _what: operation())
                self.dead_letters.confirm()
                self._commit()
                return
            except Exception as exc:  # noqa: BLE001 - logged; the messages go back to the group
                log.warning("sink %s: flush on revoke failed: %s", self.kind, exc)
        self._forget(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): committing is no longer possible; just let go.
        self.watchdog.unassigned()
        self._forget({(p.topic, p.partition) for p in partitions})

    def _forget(self, partitions: set[PartitionKey]) -> None:
        dropped = self._batch.drop(partitions)
        self._early = [m for m in self._early if (m.topic(), m.partition()) not in partitions]
        self._m_uncommitted.set(len(self._batch))
        if dropped:
            log.info("sink %s: handed %d unwritten messages back to the group", self.kind, dropped)

    def _shutdown(self) -> None:
        wait_s = self.cfg.rejoin_timeout_s
        try:
            self.dead_letters.close()
            if self.member.consumer is not None:
                self.commits.await_answers(self.member.consumer, wait_s, _POLL_SLICE_S)
                self._measure_lag()
                self.member.close(wait_s)
        finally:
            close_in_background(self.lag, wait_s, f"sink-{self.kind}-lag")
            self.writer.close()
        log.info("sink %s: stopped: written=%d deadletter=%d retries=%d", self.kind,
                 self.metrics.written, self.metrics.dead_lettered, self.metrics.retries)
