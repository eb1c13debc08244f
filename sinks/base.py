"""The consumer loop every sink shares, so a concrete sink only says what it reads and how to write it.

Delivery is at-least-once and the writes are idempotent (verdict replays collapse
in ClickHouse, heatmap keys are overwritten), so the loop keeps one rule: **an
offset is committed only after everything before it was written** (or sent to
the dead-letter topic). Concretely:

* Messages are gathered into a batch until ``sinks.batch_size`` messages or
  ``sinks.flush_interval_ms`` since the batch's first message.
* A message ``decode`` rejects with :class:`SchemaError` is produced to
  ``lineguard.deadletter`` with the error's reason, once; it is never retried.
* ``write(batch)`` failures are retried with jittered exponential backoff
  (``retry_initial_ms`` .. ``retry_max_ms``) until they succeed or the sink is
  stopped; nothing is committed meanwhile. While retrying, the assigned
  partitions are paused and the consumer is polled between waits, so it stays
  in its group (``max.poll.interval.ms`` counts from the last poll) and answers
  rebalances. ``max.poll.interval.ms`` is still set to 10 minutes, because one
  slow ``write`` call (a big insert into a struggling server) does not poll.
* After a write, exactly the written offsets are committed, asynchronously: the
  loop never blocks on the group coordinator (a synchronous commit waits for its
  answer without limit, and while it waits no rebalance is served). The answer
  arrives in a later poll; on shutdown the loop polls up to ``sinks.rejoin_timeout_s``
  for the answers still out.
* A consumer whose coordinator stops answering (a commit unanswered, or no
  assignment after its partitions were taken, for ``sinks.rejoin_timeout_s``) is
  closed and a new one subscribes; librdkafka was seen stuck so after a broker restart.
* On partition revocation the batch is flushed before the partitions go; if the
  write fails then, the revoked partitions' messages are dropped from the batch
  uncommitted, and their new owner reads them again.
* Lag (messages after the committed offset, per partition) is measured from the
  broker every ``sinks.lag_report_s``, also while a write is being retried, and
  exported as ``lineguard_sink_consumer_lag``; while the store is failing it is
  logged too, so an outage shows how far behind the sink is.
"""

from __future__ import annotations

import abc
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from lineguard import kafka_admin
from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import DeadLetter, SchemaError, topics

from . import metrics as prom

log = get_logger(__name__)

T = TypeVar("T")
PartitionKey = tuple[str, int]

# How long one poll may block: bounds how late stop requests, flush deadlines and
# idle exits are noticed.
_POLL_SLICE_S = 0.2
# Joining a group can take seconds (the broker's group.initial.rebalance.delay.ms, 3 s by
# default, then the assignment): an idle exit waits at least this long for a first assignment.
_FIRST_ASSIGNMENT_GRACE_S = 15.0
MAX_POLL_INTERVAL_MS = 10 * 60 * 1000


class SinkStopped(Exception):
    """Raised inside the loop when a stop was requested while a write was still failing."""


@dataclass
class SinkMetrics:
    consumed: int = 0        # messages taken from Kafka
    written: int = 0         # items handed to a successful write()
    dead_lettered: int = 0   # messages delivered to the dead-letter topic
    retries: int = 0         # failed write attempts that were retried
    commits: int = 0         # successful offset commits
    commit_failures: int = 0
    revocations: int = 0     # rebalances that took partitions away
    reopens: int = 0         # consumers replaced after being stuck without an assignment
    # Messages after the committed offset, per "topic[partition]" this sink holds,
    # measured from the broker every sinks.lag_report_s and on exit.
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())


@dataclass
class _Pending(Generic[T]):
    partition: PartitionKey
    item: T


class Sink(abc.ABC, Generic[T]):
    """Consume, decode, batch, write, commit. Subclasses name what they read and give ``write``."""

    kind: ClassVar[str]  # the sink's name: consumer group, metrics label
    topic_kind: ClassVar[str]  # the per-line topics it reads: "verdicts" or "heatmaps"
    message_type: ClassVar[Any]  # the schemas message class those topics carry

    def __init__(
        self,
        settings: Settings,
        *,
        lines: Sequence[str] | None = None,
        group_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.sinks
        self.group_id = group_id or f"lineguard-sink-{self.kind}"
        # A list of lines subscribes to their topics; None follows every line,
        # including ones created later (regex subscription).
        self.subscription: list[str] = (
            [self.topic_for_line(line) for line in lines] if lines else [self.topic_pattern()]
        )
        self.metrics = SinkMetrics()
        self._consumer_overrides = dict(consumer_overrides or {})
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._pending: list[_Pending[T]] = []
        self._offsets: dict[PartitionKey, int] = {}   # next offset to commit, per partition
        self._batch_started: float | None = None
        self._dead_letters_unconfirmed = 0
        self._dead_letter_errors: list[str] = []
        self._dead_letter_redo: list[tuple[bytes, bytes | None, str]] = []  # failed deliveries
        self._stop = threading.Event()
        self._in_retry = False
        self._early: list[Message] = []                # polled while paused for a retry
        self._assigned_at: float | None = None
        self._unassigned_since: float | None = None  # partitions taken, no assignment (even empty) since
        self._started_at = self._last_message_at = time.monotonic()
        self._lag_measured_at = 0.0
        self._failing_since: float | None = None
        self._committed: dict[PartitionKey, int] = {}  # last committed offset we know of
        self._consumer_generation = 0  # callbacks of replaced consumers are ignored
        self._commits_sent_at: deque[float] = deque()  # when each unanswered commit was sent (answers come in order)
        self._lag_labels: set[tuple[str, str]] = set()
        self._m_consumed = prom.CONSUMED.labels(self.kind)
        self._m_written = prom.WRITTEN.labels(self.kind)
        self._m_write_seconds = prom.WRITE_SECONDS.labels(self.kind)
        self._m_uncommitted = prom.UNCOMMITTED.labels(self.kind)
        self._m_retrying = prom.RETRYING.labels(self.kind)

    # ---- what subclasses set (topic_kind, message_type) and give (write) ---------------------

    @classmethod
    def topic_pattern(cls) -> str:
        """The regex (``^...``) of every line's topic this sink reads."""
        return topics.pattern(cls.topic_kind)

    @classmethod
    def topic_for_line(cls, line_id: str) -> str:
        return topics.per_line(cls.topic_kind, line_id)

    def decode(self, data: bytes) -> T:
        """Bytes to item; raises SchemaError for input that can never be written."""
        return self.message_type.decode(data, max_bytes=self.settings.kafka.message_max_bytes)

    @abc.abstractmethod
    def write(self, batch: list[T]) -> None:
        """Write the batch; raise on failure (the whole batch is retried). Must be idempotent."""

    def close(self) -> None:
        """Called by run() on exit. Stores are the caller's and stay open."""

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
        consumer = self._open_consumer()
        self._started_at = self._last_message_at = time.monotonic()
        log.info("sink %s: group %s subscribing to %s", self.kind, self.group_id, self.subscription)
        try:
            while not stop.is_set():
                budget = self.cfg.batch_size - len(self._pending)
                if max_messages is not None:
                    budget = min(budget, max_messages - self.metrics.consumed)
                    if budget <= 0:
                        break
                messages = self._take_early(budget) or consumer.consume(
                    num_messages=max(budget, 1), timeout=self._poll_timeout()
                )
                for message in messages:
                    self._accept(message)
                if self._batch_due():
                    self._flush()
                self._maybe_measure_lag()
                consumer = self._maybe_reopen(consumer)
                if idle_exit_s is not None and not messages and self._idle_expired(idle_exit_s):
                    break
            self._flush()
        except SinkStopped:
            log.warning("sink %s: stopped while a write was failing; %d messages left uncommitted",
                        self.kind, len(self._pending))
            self._forget(set(self._offsets))  # so closing does not try to flush them again
        finally:
            self._shutdown()
        return self.metrics

    def _open_consumer(self) -> Consumer:
        conf = kafka_admin.consumer_config(
            self.settings.kafka,
            self.group_id,
            **{
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                # New line topics matching the regex are picked up within this time.
                "topic.metadata.refresh.interval.ms": 10_000,
                "on_commit": self._current(self._on_commit),
                **self._consumer_overrides,
            },
        )
        consumer = Consumer(conf)
        consumer.subscribe(self.subscription, on_assign=self._current(self._on_assign),
                           on_revoke=self._current(self._on_revoke), on_lost=self._current(self._on_lost))
        self._consumer = consumer
        return consumer

    def _current(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback``, ignored once the consumer it is given to has been replaced: a replaced
        consumer closes in the background and must not touch this sink's state."""
        generation = self._consumer_generation

        def guarded(*args: Any) -> None:
            if generation == self._consumer_generation:
                callback(*args)
        return guarded

    def _close_consumer(self, consumer: Consumer, wait_s: float) -> None:
        """Close in a helper thread, waiting at most ``wait_s``: librdkafka's close waits for the
        answers to commits sent, without limit, while the coordinator does not answer."""
        def close() -> None:
            try:
                consumer.close()
            except Exception as exc:  # noqa: BLE001 - nothing is left to do with it
                log.warning("sink %s: closing a consumer: %s", self.kind, exc)
        closer = threading.Thread(target=close, name=f"sink-{self.kind}-close", daemon=True)
        closer.start()
        closer.join(wait_s)
        if closer.is_alive() and wait_s > 0:
            self._consumer_generation += 1  # its late callbacks are ignored
            log.warning("sink %s: the consumer is still closing after %.0fs; left to finish in the background",
                        self.kind, wait_s)

    def _maybe_reopen(self, consumer: Consumer) -> Consumer:
        """A consumer whose group coordinator stopped answering is closed and a new one subscribes.

        Seen once in about twenty broker restarts: librdkafka's request to the coordinator never
        left its queue, the session timed out, and the sink sat idle while its lag grew. Messages
        it had not committed are read again by the new consumer (at-least-once; the stores are
        idempotent)."""
        stuck = self._stuck_for()
        if stuck is None:
            return consumer
        log.warning("sink %s: %s; reopening the consumer", self.kind, stuck)
        self.metrics.reopens += 1
        self._forget(set(self._offsets))
        self._consumer_generation += 1  # from here on the old consumer's callbacks are ignored
        self._close_consumer(consumer, wait_s=0)
        self._committed.clear()
        self._unassigned_since = None
        self._commits_sent_at.clear()  # the old consumer's answers will not come
        return self._open_consumer()

    def _stuck_for(self) -> str | None:
        now, limit = time.monotonic(), self.cfg.rejoin_timeout_s
        if self._unassigned_since is not None and now - self._unassigned_since >= limit:
            return f"no partitions assigned for {now - self._unassigned_since:.0f}s since they were taken"
        if self._commits_sent_at and now - self._commits_sent_at[0] >= limit:
            return f"a commit unanswered for {now - self._commits_sent_at[0]:.0f}s"
        return None

    def _take_early(self, budget: int) -> list[Message]:
        taken, self._early = self._early[:budget], self._early[budget:]
        return taken

    def _poll_timeout(self) -> float:
        if self._batch_started is None:
            return _POLL_SLICE_S
        due_in = self._batch_started + self.cfg.flush_interval_ms / 1000 - time.monotonic()
        return max(0.0, min(_POLL_SLICE_S, due_in))

    def _idle_expired(self, idle_exit_s: float) -> bool:
        now = time.monotonic()
        if self._assigned_at is None:  # still joining, or nothing matches the subscription
            return now - self._started_at >= max(idle_exit_s, _FIRST_ASSIGNMENT_GRACE_S)
        return now - max(self._last_message_at, self._assigned_at) >= idle_exit_s

    def _batch_due(self) -> bool:
        if self._batch_started is None:
            return False
        return (
            len(self._pending) >= self.cfg.batch_size
            or time.monotonic() - self._batch_started >= self.cfg.flush_interval_ms / 1000
        )

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
        if self._batch_started is None:
            self._batch_started = self._last_message_at
        key: PartitionKey = (message.topic(), message.partition())
        try:
            item = self.decode(message.value())
        except SchemaError as exc:
            self._dead_letter(message, exc)
        else:
            self._pending.append(_Pending(key, item))
        self._offsets[key] = message.offset() + 1
        self._m_uncommitted.set(len(self._pending))

    # ---- dead letters -----------------------------------------------------------

    def _dead_letter(self, message: Message, exc: SchemaError) -> None:
        topic = message.topic()
        try:
            line_id: str | None = topics.line_of(topic)
        except ValueError:
            line_id = None
        record = DeadLetter.build(
            source_topic=topic,
            partition=message.partition(),
            offset=message.offset(),
            reason=exc.reason,
            error=str(exc),
            raw=message.value() or b"",
            max_raw_bytes=self.settings.limits.deadletter_max_raw_bytes,
            failed_at_ns=time.time_ns(),
            component=f"sink-{self.kind}",
            line_id=line_id,
        )
        log.warning("sink %s: dead-lettering %s[%d]@%d: %s (%s)", self.kind, topic,
                    message.partition(), message.offset(), exc.reason, exc)
        self._produce_dead_letter(record.encode(), message.key(), exc.reason)

    def _produce_dead_letter(self, payload: bytes, key: bytes | None, reason: str = "unknown") -> None:
        if self._producer is None:
            self._producer = Producer(kafka_admin.producer_config(self.settings.kafka))

        def delivered(err: KafkaError | None, msg: Message) -> None:
            self._dead_letters_unconfirmed -= 1
            if err is None:
                self.metrics.dead_lettered += 1
                prom.DEAD_LETTERS.labels(self.kind, reason).inc()
            else:
                # Kept to re-send: the source offset must not be committed without it.
                self._dead_letter_errors.append(str(err))
                self._dead_letter_redo.append((payload, key, reason))

        self._producer.produce(topics.DEADLETTER, value=payload, key=key, on_delivery=delivered)
        self._dead_letters_unconfirmed += 1
        self._producer.poll(0)

    def _confirm_dead_letters(self) -> None:
        """Wait until every dead letter is on the broker; raise (to retry) if any failed."""
        if self._producer is None:
            return
        self._producer.flush(30)
        redo, self._dead_letter_redo = self._dead_letter_redo, []
        if self._dead_letters_unconfirmed > 0 or redo:
            errors, self._dead_letter_errors = self._dead_letter_errors, []
            for payload, key, reason in redo:
                self._produce_dead_letter(payload, key, reason)
            raise KafkaException(f"dead-letter delivery incomplete: {errors or 'timed out'}")

    # ---- flush: write with retry, then commit ----------------------------------------

    def _flush(self) -> None:
        if not self._offsets:
            self._batch_started = None
            return
        if self._pending:
            self._with_retry(self._write_pending, "write")
        self._with_retry(self._confirm_dead_letters, "dead-letter delivery")
        self._commit()

    def _write_pending(self) -> None:
        # Re-read on every attempt: a rebalance during the backoff may have taken
        # some partitions' messages out of the batch.
        if not self._pending:
            return
        batch = [p.item for p in self._pending]
        started = time.monotonic()
        self.write(batch)
        self._m_write_seconds.observe(time.monotonic() - started)
        self.metrics.written += len(batch)
        self._m_written.inc(len(batch))

    def _with_retry(self, operation: Callable[[], None], what: str) -> None:
        attempt = 0
        while True:
            try:
                operation()
                if attempt:
                    log.info("sink %s: %s succeeded after %d failed attempts (%.1fs)", self.kind, what,
                             attempt, time.monotonic() - (self._failing_since or time.monotonic()))
                    self._failing_since = None
                    self._m_retrying.set(0)
                return
            except Exception as exc:  # any failure of the store is presumed transient
                if self._stop.is_set():
                    raise SinkStopped() from exc
                delay_ms = min(self.cfg.retry_max_ms, self.cfg.retry_initial_ms * 2 ** min(attempt, 30))
                delay_s = delay_ms / 1000 * random.uniform(0.5, 1.0)  # jitter: no thundering herd
                attempt += 1
                self.metrics.retries += 1
                prom.RETRIES.labels(self.kind, what).inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                self._m_retrying.set(1)
                log.warning("sink %s: %s failed (attempt %d, retrying in %.2fs): %s: %s",
                            self.kind, what, attempt, delay_s, type(exc).__name__, exc)
                self._wait_paused(delay_s)

    def _wait_paused(self, seconds: float) -> None:
        """Back off without leaving the group: pause, poll in short slices, resume."""
        consumer = self._consumer
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
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        self._pending.clear()
        self._offsets.clear()
        self._batch_started = None
        self._m_uncommitted.set(0)
        if self._consumer is None or not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)  # answered in _on_commit
        except KafkaException as exc:
            self._commit_failed(exc)
            return
        self._commits_sent_at.append(time.monotonic())

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._commits_sent_at:
            self._commits_sent_at.popleft()
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            self._commit_failed(err or failed[0].error)
            return
        self.metrics.commits += 1
        prom.COMMITS.labels(self.kind).inc()
        try:
            held = {(tp.topic, tp.partition) for tp in self._consumer.assignment()} if self._consumer else set()
        except (KafkaException, RuntimeError):  # answered while the consumer closes
            held = set()
        for tp in partitions:
            if (tp.topic, tp.partition) in held:  # a partition that moved away is its new owner's to report
                self._committed[(tp.topic, tp.partition)] = tp.offset

    def _commit_failed(self, error: object) -> None:
        # The rows are written; if the group moved on, whoever owns the partitions
        # now re-reads them, and the replay collapses. Nothing is lost.
        self.metrics.commit_failures += 1
        prom.COMMIT_FAILURES.labels(self.kind).inc()
        log.warning("sink %s: commit failed (%s); these messages will be read again", self.kind, error)

    def _await_commits(self, consumer: Consumer, timeout_s: float) -> None:
        """Poll until every commit sent is answered (or ``timeout_s`` passes). Messages polled
        meanwhile are dropped: they are after the committed offsets, so they are read again."""
        deadline = time.monotonic() + timeout_s
        while self._commits_sent_at and time.monotonic() < deadline:
            consumer.poll(_POLL_SLICE_S)
        if self._commits_sent_at:
            log.warning("sink %s: %d commits unanswered after %.0fs; their messages will be read again",
                        self.kind, len(self._commits_sent_at), timeout_s)

    def _maybe_measure_lag(self) -> None:
        if time.monotonic() - self._lag_measured_at >= self.cfg.lag_report_s:
            self._measure_lag()

    def _measure_lag(self, timeout_s: float = 2.0) -> None:
        """Lag per held partition: the broker's high watermark minus the committed offset."""
        consumer = self._consumer
        self._lag_measured_at = time.monotonic()
        if consumer is None:
            return
        try:
            assignment = consumer.assignment()
            unknown = [tp for tp in assignment if (tp.topic, tp.partition) not in self._committed]
            if unknown:
                for tp in consumer.committed(unknown, timeout=timeout_s):
                    if tp.offset >= 0:
                        self._committed[(tp.topic, tp.partition)] = tp.offset
            lag = {}
            for tp in assignment:
                # Not cached: while paused for a retry nothing is fetched, so the cache would be stale.
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                start = self._committed.get((tp.topic, tp.partition), low)
                lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - start)
        except KafkaException as exc:
            log.debug("sink %s: lag unavailable: %s", self.kind, exc)
            return
        self.metrics.lag = lag  # only partitions this sink holds now
        labels = set()
        for name, value in lag.items():
            topic, partition = name[:-1].rsplit("[", 1)
            labels.add((topic, partition))
            prom.CONSUMER_LAG.labels(self.kind, topic, partition).set(value)
        for topic, partition in self._lag_labels - labels:  # partitions that moved away
            prom.CONSUMER_LAG.remove(self.kind, topic, partition)
        self._lag_labels = labels
        if self._failing_since is not None:
            log.warning("sink %s: store failing for %.0fs; lag %d messages on %d partitions (%d in the failing batch)",
                        self.kind, time.monotonic() - self._failing_since, sum(lag.values()), len(lag),
                        len(self._pending))

    # ---- rebalances -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        self._unassigned_since = None
        log.info("sink %s: assigned %s", self.kind, [f"{p.topic}[{p.partition}]" for p in partitions])
        if self._in_retry and partitions:
            consumer.pause(partitions)  # no new work while the current batch is failing

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._unassigned_since = time.monotonic()
        try:
            self._flush_on_revoke(partitions)
        finally:
            for p in partitions:  # their next owner commits: ask the broker again if they come back
                self._committed.pop((p.topic, p.partition), None)

    def _flush_on_revoke(self, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        if revoked:
            self.metrics.revocations += 1
        if not revoked & set(self._offsets):
            return
        if not self._in_retry:
            # Flush while the partitions are still ours, with one attempt only: a
            # rebalance must not wait on a failing store.
            try:
                self._write_pending()
                self._confirm_dead_letters()
                self._commit()
                return
            except Exception as exc:  # noqa: BLE001 - logged; the messages go back to the group
                log.warning("sink %s: flush on revoke failed: %s", self.kind, exc)
        self._forget(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): committing is no longer possible; just let go.
        self._unassigned_since = time.monotonic()
        self._forget({(p.topic, p.partition) for p in partitions})

    def _forget(self, partitions: set[PartitionKey]) -> None:
        for key in partitions:
            self._committed.pop(key, None)  # a later owner commits; ask the broker again if it returns
        before = len(self._pending)
        self._pending = [p for p in self._pending if p.partition not in partitions]
        for key in partitions:
            self._offsets.pop(key, None)
        self._early = [m for m in self._early if (m.topic(), m.partition()) not in partitions]
        self._m_uncommitted.set(len(self._pending))
        if before != len(self._pending):
            log.info("sink %s: handed %d unwritten messages back to the group", self.kind,
                     before - len(self._pending))
        if not self._offsets:
            self._batch_started = None

    def _shutdown(self) -> None:
        try:
            if self._producer is not None:
                self._producer.flush(10)
            if self._consumer is not None:
                self._await_commits(self._consumer, self.cfg.rejoin_timeout_s)
                self._measure_lag()
                # Leaves the group; commits nothing (auto commit is off).
                self._close_consumer(self._consumer, wait_s=self.cfg.rejoin_timeout_s)
        finally:
            self._consumer = None
            self.close()
        log.info("sink %s: stopped: written=%d deadletter=%d retries=%d", self.kind,
                 self.metrics.written, self.metrics.dead_lettered, self.metrics.retries)
