"""The stream processor: a faust-streaming app that scores every line's frames in micro-batches.

Flow per frame::

    lineguard.frames.<line> --(decode msgpack, cheap, on the loop)--> MicroBatcher (per model)
        --(flush: decode images, score, render heatmaps; worker threads)-->
        lineguard.heatmaps.<line>, lineguard.verdicts.<line>  |  lineguard.deadletter
        (+ lineguard.shadow.<line>: the shadow candidate's verdicts of the same frames, when the line has one)
        --(every output acknowledged by the broker)--> ack the frame (faust commits acked offsets)

Acknowledging only after delivery makes the path at-least-once: a crash
re-delivers frames whose verdicts may already be out, and consumers
deduplicate on ``frame_id`` (the ClickHouse table does it by design).
Processors are stateless members of one consumer group whose assignor
(:mod:`.assignor`) spreads every line's frame partitions over the workers, so
adding workers adds throughput up to lines x partitions workers; lines created
later are followed without a restart (:mod:`.lines`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from lineguard.backoff import Backoff
from lineguard.config import Settings
from lineguard.inspection import ModelRegistry
from lineguard.kafka import LagTracker, faust_broker_settings
from lineguard.schemas import DeadLetter, Frame, ImageLimits, Reason, SchemaError, topics

from . import metrics as prom
from .assignor import LineSpreadingAssignor
from .batching import BatchLimits, MicroBatcher
from .lines import LINE_DISCOVERY_S, LineSelection, LineWatcher
from .scoring import BatchScorer, Outcome, Work

log = logging.getLogger("lineguard.processor")
COMPONENT = "processor"
MAX_DEAD_LETTERS_IN_FLIGHT = 256  # bad messages whose dead letter is being sent
PUBLISH_BACKOFF = Backoff(initial_s=0.2, max_s=10.0)  # between attempts to publish one output


class FrameProcessor:
    """Owns the batcher, the scorer and publishing; the faust agent feeds it events."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        pconf = settings.processor
        self.registry = ModelRegistry.from_settings(settings)
        self.registry.on_load.append(prom.model_loaded)  # lineguard_processor_model_info follows hot reloads
        self.scorer = BatchScorer(pconf, ImageLimits.from_config(settings.limits), self.registry,
                                  plant=settings.plant)
        # Two scoring threads, one per batch the batcher prepares at once: one batch decodes or renders
        # while the other is in ONNX Runtime (which already uses every core inside one run).
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="score")
        max_pending = max(64, 4 * max(b.max_batch for b in [pconf.batching, *pconf.batching_per_product.values()]))
        self.batcher: MicroBatcher[Work] = MicroBatcher(self._limits_for, self._score, self._publish_outcomes,
                                                        max_pending=max_pending)
        self.counts: Counter[str] = Counter()
        self.stream: Any = None
        # Dead letters for messages refused before batching are sent without holding up the stream: one
        # broker round trip each, awaited inline, cost 11% of the good frames' rate at 20% bad messages.
        # The offset is acked once the letter is stored (faust commits only contiguous acked offsets);
        # the semaphore bounds how many are in flight.
        self._dead_letter_slots = asyncio.Semaphore(MAX_DEAD_LETTERS_IN_FLIGHT)
        self._dead_letter_tasks: set[asyncio.Task] = set()
        self._last_report = time.monotonic()
        self.joined = False  # a rebalance completed: this worker is a member of the group
        self.lag = LagTracker(settings.kafka, pconf.consumer_group, gauge=prom.CONSUMER_LAG)
        prom.PENDING.set_function(lambda: self.counts["frames_in"] - self.counts["acked"])

    def not_ready(self) -> str | None:
        """Why this worker cannot score yet (``/ready``): not in the group, rebalancing, or no model loaded."""
        if not self.joined:
            return "joining the consumer group"
        if self.app.rebalancing:
            return "rebalancing"
        if not self.registry.loaded():
            return f"no model loaded from {self.registry.model_dir}"
        return None

    def _limits_for(self, key: str) -> BatchLimits:
        product = key.split("@", 1)[0]
        b = self.settings.processor.batching_for(product)
        return BatchLimits(b.max_batch, b.max_wait_ms)

    async def accept(self, event: Any) -> None:
        message = event.message
        received_ns = time.time_ns()
        self.counts["frames_in"] += 1
        line = _line_or_topic(message.topic)
        camera = prom.NO_CAMERA  # until the frame decodes: a label only ever holds a validated camera id
        try:
            frame = Frame.decode(event.value, max_bytes=self.settings.kafka.message_max_bytes)
            camera = frame.camera_id
            topic_line = topics.line_of(message.topic)
            if frame.line_id != topic_line:
                raise SchemaError(Reason.UNKNOWN_LINE,
                                  f"frame says line {frame.line_id!r} but arrived on {message.topic}")
        except SchemaError as exc:
            await self._dead_letter_slots.acquire()
            task = asyncio.create_task(self._dead_letter_then_ack(event, exc))
            self._dead_letter_tasks.add(task)
            task.add_done_callback(self._dead_letter_tasks.discard)
            return
        finally:
            prom.FRAMES_IN.labels(line, prom.camera_label(line, camera)).inc()
        await self.batcher.put(f"{frame.product}@{frame.line_id}", Work(frame, received_ns, event))

    async def _score(self, key: str, batch: list[Work]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        prom.BATCH_SIZE.observe(len(batch))
        now_ns = time.time_ns()
        for work in batch:
            prom.QUEUE_WAIT_SECONDS.observe(max(0.0, (now_ns - work.received_ns) / 1e9))
        try:
            with prom.SCORING_SECONDS.time():
                return await loop.run_in_executor(self.executor, self.scorer.score, batch)
        except Exception as exc:  # e.g. a model file that cannot be loaded: park the frames, don't stall
            log.exception("scoring a batch of %s failed", key)
            error = SchemaError(Reason.SCORING_FAILED, f"{type(exc).__name__}: {exc}")
            return [Outcome(work, failure=error) for work in batch]

    async def _publish_outcomes(self, key: str, batch: list[Work], outcomes: list[Outcome]) -> None:
        sends = []
        for outcome in outcomes:
            frame = outcome.work.frame
            if outcome.failure is not None:
                sends.append(self._dead_letter(outcome.work.handle, outcome.failure,
                                               frame_id=frame.frame_id, line_id=frame.line_id))
                continue
            key_bytes = frame.camera_id.encode()
            if outcome.heatmap is not None:
                sends.append(self._publish(topics.heatmaps(frame.line_id), key_bytes, outcome.heatmap.encode()))
                self.counts["heatmaps_out"] += 1
            if outcome.archive is not None:  # the frame archive travels the heatmap path: the heatmap sink stores it
                sends.append(self._publish(topics.heatmaps(frame.line_id), key_bytes, outcome.archive.encode()))
                self.counts["archived"] += 1
            sends.append(self._publish(topics.verdicts(frame.line_id), key_bytes, outcome.verdict.encode()))
            self.counts["verdicts_out"] += 1
            if outcome.shadow is not None:  # the shadow candidate's verdict: its own topic, never the verdict topic
                sends.append(self._publish_shadow(topics.shadow(frame.line_id), key_bytes, outcome.shadow.encode()))
                self.counts["shadow_out"] += 1
            if outcome.verdict.late:
                self.counts["late"] += 1
                prom.LATE_VERDICTS.labels(frame.line_id).inc()
            if outcome.verdict.is_defective:
                self.counts["defective"] += 1
        await asyncio.gather(*sends)
        for outcome in outcomes:
            await self.stream.ack(outcome.work.handle)
            if outcome.verdict is not None:
                prom.count_verdict(outcome.verdict.line_id, outcome.verdict.is_defective)
                if outcome.heatmap is not None:
                    prom.HEATMAPS_OUT.labels(outcome.verdict.line_id).inc()
        self.counts["acked"] += len(outcomes)
        self.counts["batches"] += 1
        self._maybe_report()

    async def _publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send and wait for the broker's acknowledgement; retry (with backoff) until it comes."""
        attempt = 0
        while True:
            try:
                future = await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)
                await future
                return
            except Exception as exc:  # broker down, leader moving, request timed out...
                delay = PUBLISH_BACKOFF.delay(attempt)
                attempt += 1
                self.counts["publish_retries"] += 1
                prom.PUBLISH_RETRIES.inc()
                log.warning("publishing to %s failed (%s: %s); retrying in %.1fs", topic, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _publish_shadow(self, topic: str, key: bytes, value: bytes, attempts: int = 3) -> None:
        """A shadow verdict: a few attempts, then dropped (logged and counted): a trial's verdict never holds
        the live frames' acknowledgement back for long."""
        for attempt in range(attempts):
            try:
                future = await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)
                await asyncio.wait_for(future, timeout=10.0)
                return
            except Exception as exc:  # noqa: BLE001 - see the docstring
                if attempt + 1 == attempts:
                    self.counts["shadow_dropped"] += 1
                    prom.SHADOW_FAILURES.labels(_line_or_topic(topic)).inc()
                    log.warning("shadow verdict to %s dropped (%s: %s)", topic, type(exc).__name__, exc)
                    return
                await asyncio.sleep(PUBLISH_BACKOFF.delay(attempt))

    async def _dead_letter_then_ack(self, event: Any, error: SchemaError) -> None:
        try:
            await self._dead_letter(event, error, frame_id=None, line_id=None)
            await self.stream.ack(event)
            self.counts["acked"] += 1
        finally:
            self._dead_letter_slots.release()

    async def _dead_letter(self, event: Any, error: SchemaError, frame_id: str | None, line_id: str | None) -> None:
        message = event.message
        letter = DeadLetter.build(
            source_topic=message.topic, partition=message.partition, offset=message.offset,
            reason=error.reason, error=str(error), raw=event.value if isinstance(event.value, bytes) else b"",
            max_raw_bytes=self.settings.limits.deadletter_max_raw_bytes, failed_at_ns=time.time_ns(),
            component=COMPONENT, frame_id=frame_id, line_id=line_id,
        )
        self.counts[f"deadletter.{error.reason}"] += 1
        self.counts["deadletter"] += 1
        log.info("dead letter %s from %s[%d]@%d: %s", error.reason, message.topic, message.partition, message.offset, error)
        await self._publish(topics.DEADLETTER, None, letter.encode())
        # The line from the topic when the frame could not say (undecodable): every dead letter has one.
        prom.DEAD_LETTERS.labels(line_id or _line_or_topic(message.topic), error.reason).inc()

    def _maybe_report(self, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._last_report >= every_s:
            self._last_report = now
            log.info("processed %s; consumer lag %d", dict(sorted(self.counts.items())),
                     self.lag.total)

    async def measure_lag(self) -> None:
        """Lag of the partitions this worker holds, from the broker (in a thread: the probe blocks)."""
        assigned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()]
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.lag.measure, assigned)
        except Exception as exc:  # noqa: BLE001 - a broker away for a moment: report next time
            log.debug("consumer lag unavailable: %s", exc)


def _line_or_topic(topic: str) -> str:
    try:
        return topics.line_of(topic)
    except ValueError:
        return topic


def build_app(settings: Settings, frame_topics: list[str]) -> tuple[faust.App, FrameProcessor]:
    """The faust app scoring ``frame_topics``, and more lines' as they appear when processor.lines has patterns."""
    pconf = settings.processor
    datadir = settings.state_dir / "faust" / pconf.processor_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        pconf.consumer_group,
        **faust_broker_settings(settings.kafka),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        web_enabled=pconf.web_port > 0,
        web_port=pconf.web_port or 6066,
        web_bind="127.0.0.1",
        topic_disable_leader=True,  # the broker does not auto-create topics, and we need no leader
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(32, 2 * pconf.batching.max_batch),
        broker_max_poll_records=max(16, 2 * pconf.batching.max_batch),
        broker_max_poll_interval=600.0,
        # A crashed worker's partitions move after this long (faust's default is 60 s).
        broker_session_timeout=pconf.session_timeout_s,
        broker_heartbeat_interval=min(3.0, pconf.session_timeout_s / 3),
        # Each line's partitions spread over the workers; faust would co-partition same-sized topics.
        # (faust uses it while table_standby_replicas > 0, its default, or the app has tables.)
        PartitionAssignor=LineSpreadingAssignor,
    )
    processor = FrameProcessor(app, settings)
    source = app.topic(*frame_topics, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    source.topics = list(frame_topics)  # a list, not faust's tuple: LineWatcher extends it in place

    @app.agent(source, name="score-frames")
    async def score_frames(stream: faust.Stream) -> None:
        manual = stream.noack()
        processor.stream = manual
        async for event in manual.events():
            await processor.accept(event)

    @app.on_rebalance_complete.connect
    async def _joined(sender: Any, **_kwargs: Any) -> None:
        processor.joined = True

    @app.task
    async def load_models() -> None:
        # Loaded before the first frame, so readiness means "can score" and the first batch is not slow.
        models = await asyncio.get_running_loop().run_in_executor(None, processor.registry.load_all)
        log.info("models loaded: %s", [m.folder for m in models] or "none")

    @app.timer(10.0)
    async def report() -> None:
        processor._maybe_report(every_s=10.0)

    @app.timer(pconf.lag_report_s)
    async def report_lag() -> None:
        await processor.measure_lag()

    selection = LineSelection(pconf.lines)
    if selection.patterns:
        watcher = LineWatcher(app, source, selection, settings.kafka)

        @app.timer(LINE_DISCOVERY_S)
        async def follow_new_lines() -> None:
            try:
                await watcher.refresh()
            except Exception as exc:  # noqa: BLE001 - a broker away for a moment: look again next time
                log.warning("looking for new lines failed (%s: %s)", type(exc).__name__, exc)

    return app, processor
