"""CameraProducer: publishes one camera's images as :class:`~lineguard.schemas.Frame` messages.

Frames go to ``lineguard.frames.<line>`` keyed by camera id, so one camera's
frames stay in one partition, in order. The producer is idempotent with
``acks=all``: a retried send never duplicates or reorders a frame. Every
frame is accounted for: ``sent == delivered + failed`` once :meth:`close` returns.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message

from lineguard.config import Settings
from lineguard.kafka import producer_client
from lineguard.schemas import Frame, new_frame_id, topics
from lineguard.schemas.image import encode
from lineguard.schemas.messages import MAX_META_ITEMS

from . import metrics
from .sources import SourceImage

log = logging.getLogger(__name__)

ENCODINGS = ("jpeg", "png", "raw")
# Log every distinct failure reason once, then one line per this many failures: a broker
# outage fails thousands of frames and must not drown the log, yet never goes unreported.
_FAILURE_LOG_EVERY = 100
# run(fps=...) catches up on lag up to this long; beyond it the schedule restarts.
MAX_CATCH_UP_S = 1.0


class FrameTooLargeError(ValueError):
    """A frame that no hop of the pipeline would accept; refused before it reaches Kafka."""


@dataclass(frozen=True)
class ProducerStats:
    sent: int        # handed to the producer (or refused: see failed)
    delivered: int   # acknowledged by all in-sync replicas
    failed: int      # refused, or reported failed by the delivery callback
    skipped: int     # source images that could not be read


def _clean_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Fit source meta to Frame.meta's contract: str/int/float/bool values, at most 64 items."""
    clean: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        clean[str(key)] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if len(clean) == MAX_META_ITEMS:
            break
    return clean


class CameraProducer:
    """One camera on one line. Not thread-safe: use one per camera thread or process."""

    def __init__(
        self,
        settings: Settings,
        line_id: str,
        camera_id: str = "cam0",
        product: str = "washer",
        encoding: str = "jpeg",
        config_overrides: dict[str, Any] | None = None,
        part_id_meta: str | None = None,
    ) -> None:
        # The meta field naming the part a frame shows (a serial, the PLC's part counter): its value becomes
        # Frame.part_id, so `lineguard parts` can join the cameras that see one part.
        self.part_id_meta = part_id_meta
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose from {ENCODINGS}")
        if not camera_id or len(camera_id) > 128 or not product or len(product) > 128:
            raise ValueError("camera_id and product must be 1..128 characters")
        self.settings = settings
        self.line_id = line_id
        self.topic = topics.frames(line_id)  # validates the line id
        self.camera_id = camera_id
        self.product = product
        self.encoding = encoding
        self.max_message_bytes = settings.kafka.message_max_bytes
        self.max_image_bytes = settings.limits.max_image_bytes
        self._key = camera_id.encode()
        self._seq = 0
        self._sent = 0
        self._delivered = 0
        self._failed = 0
        self._skipped = 0
        self._failure_reasons: Counter[str] = Counter()
        self._closed = False
        self._m_sent = metrics.FRAMES_SENT.labels(line_id)
        self._m_delivered = metrics.FRAMES_DELIVERED.labels(line_id)
        self._m_failed = metrics.FRAMES_FAILED.labels(line_id)
        self._m_bytes = metrics.FRAME_BYTES.labels(line_id)
        self._m_queue_full = metrics.QUEUE_FULL_WAITS.labels(line_id)
        self._m_in_flight = metrics.IN_FLIGHT.labels(line_id)

        pconf = settings.producer
        extra: dict[str, Any] = {
            # Idempotence: retries cannot duplicate or reorder frames within a partition.
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": pconf.compression,
            "linger.ms": pconf.linger_ms,
            "message.timeout.ms": pconf.delivery_timeout_ms,
            "client.id": f"lineguard-camera-{camera_id}",
            "error_cb": self._on_client_error,
            # librdkafka's own log lines go through Python logging, not raw to stderr.
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
        extra.update(config_overrides or {})
        self._producer = producer_client(settings.kafka, **extra)
        self._flush_timeout_s = float(extra["message.timeout.ms"]) / 1000.0 + 5.0

    # -- callbacks (run inside poll()/flush(), on the caller's thread) ----------------------

    def _on_client_error(self, err: KafkaError) -> None:
        # Transient errors (broker down, reconnecting) are retried by librdkafka; fatal ones
        # (e.g. an idempotence violation) make every later send fail, so they are errors.
        # A failed connection attempt is already in librdkafka's own log (routed to Python
        # logging above), so here it is only debug output.
        if err.fatal():
            level = logging.ERROR
        elif err.code() == KafkaError._TRANSPORT:
            level = logging.DEBUG
        else:
            level = logging.WARNING
        log.log(level, "kafka client error for camera %s: %s", self.camera_id, err.str())

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._m_in_flight.dec()
        if err is None:
            self._delivered += 1
            self._m_delivered.inc()
            return
        self._record_failure(err.str(), msg.topic(), msg.partition())

    def _record_failure(self, reason: str, topic: str | None = None, partition: int | None = None) -> None:
        self._failed += 1
        self._m_failed.inc()
        self._failure_reasons[reason] += 1
        if self._failure_reasons[reason] == 1 or self._failed % _FAILURE_LOG_EVERY == 0:
            log.error(
                "frame delivery failed (camera %s, topic %s, partition %s): %s [%d failed so far]",
                self.camera_id, topic or self.topic, partition, reason, self._failed,
            )

    # -- sending ---------------------------------------------------------------------------

    @property
    def stats(self) -> ProducerStats:
        return ProducerStats(self._sent, self._delivered, self._failed, self._skipped)

    def build_frame(self, image: np.ndarray, meta: dict[str, Any] | None = None,
                    captured_at_ns: int | None = None) -> Frame:
        """The Frame for ``image`` with this camera's next sequence number, captured now unless told."""
        data, dtype, shape = encode(image, self.encoding, quality=self.settings.producer.jpeg_quality)
        frame = Frame(
            frame_id=new_frame_id(),
            line_id=self.line_id,
            camera_id=self.camera_id,
            product=self.product,
            captured_at_ns=time.time_ns() if captured_at_ns is None else captured_at_ns,
            seq=self._seq,
            encoding=self.encoding,
            image=data,
            dtype=dtype,
            shape=shape,
            meta=_clean_meta(meta),
            part_id=self._part_id(meta),
        )
        self._seq += 1
        return frame

    def _part_id(self, meta: dict[str, Any] | None) -> str | None:
        if self.part_id_meta is None:
            return None
        value = (meta or {}).get(self.part_id_meta)
        return None if value is None or value == "" else str(value)[:128]

    def send(self, image: np.ndarray, meta: dict[str, Any] | None = None,
             captured_at_ns: int | None = None) -> Frame:
        """Queue one image for delivery; returns the Frame sent (``captured_at_ns``: default now).

        Raises FrameTooLargeError (after counting the frame failed) when the frame
        exceeds what Kafka or the processors accept; the producer stays usable.
        """
        if self._closed:
            raise RuntimeError("CameraProducer is closed")
        frame = self.build_frame(image, meta, captured_at_ns)
        value = frame.encode()
        self._sent += 1
        self._m_sent.inc()
        problem = None
        if len(frame.image) > self.max_image_bytes:
            problem = (f"image of {len(frame.image)} bytes exceeds limits.max_image_bytes="
                       f"{self.max_image_bytes}; processors would reject it")
        elif len(value) + len(self._key) > self.max_message_bytes:
            problem = (f"frame message of {len(value) + len(self._key)} bytes exceeds "
                       f"kafka.message_max_bytes={self.max_message_bytes}")
        if problem:
            self._record_failure(f"refused: {problem}")
            raise FrameTooLargeError(
                f"frame seq={frame.seq} of camera {self.camera_id} ({image.shape[1]}x{image.shape[0]} "
                f"{self.encoding}): {problem}; use a smaller image, jpeg encoding, or raise the limit"
            )
        self._produce(value)
        return frame

    def _produce(self, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=self._key, on_delivery=self._on_delivery)
                self._m_in_flight.inc()
                self._m_bytes.inc(len(value))
                break
            except BufferError:
                # The local queue is full (the broker is slower than the camera, or away):
                # serve delivery reports to make room, then retry. Back-pressure, not loss.
                self._m_queue_full.inc()
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._record_failure(f"produce refused: {exc.args[0].str()}")
                return
        self._producer.poll(0)  # serve delivery callbacks that are already due

    def run(self, source: Iterable[SourceImage], fps: float | None = None, count: int | None = None) -> ProducerStats:
        """Publish images from ``source`` at ``fps`` (as fast as possible when None), at most ``count``.

        Frame ``n`` is due at ``start + n / fps`` on the monotonic clock, so pacing
        errors do not accumulate: a frame delayed by a busy CPU is followed by
        frames sent sooner. A producer more than ``MAX_CATCH_UP_S`` behind (a
        stalled source, a broker outage filling the queue) restarts the schedule
        from now instead of bursting a backlog of frames at the processors.
        """
        if fps is not None and fps <= 0:
            raise ValueError("fps must be positive")
        period = 1.0 / fps if fps else 0.0
        skipped_before = int(getattr(source, "skipped", 0))
        start = time.monotonic()
        scheduled = 0
        try:
            for item in itertools.islice(source, count):
                if period:
                    due = start + scheduled * period
                    now = time.monotonic()
                    if now - due > MAX_CATCH_UP_S:
                        log.warning("camera %s is %.1fs behind its %.3g fps schedule; restarting it",
                                    self.camera_id, now - due, fps)
                        start, scheduled, due = now, 0, now
                    self._wait_until(due)
                    scheduled += 1
                try:
                    self.send(item.image, item.meta, item.captured_at_ns)
                except FrameTooLargeError as exc:
                    log.error("%s (source image %s)", exc, item.name)
        finally:
            self._skipped += int(getattr(source, "skipped", 0)) - skipped_before
        return self.stats

    def _wait_until(self, due: float) -> None:
        # Sleep inside poll() so delivery reports are served while waiting.
        while (remaining := due - time.monotonic()) > 0:
            self._producer.poll(remaining)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return self._producer.flush(self._flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None) -> ProducerStats:
        """Flush, release the client and return the final counts.

        Frames still unresolved at the timeout are purged, which reports them
        failed ("purged") through the delivery callback: none is left uncounted.
        """
        if self._closed:
            return self.stats
        self._closed = True
        if self.flush(timeout_s):
            self._producer.purge(in_queue=True, in_flight=True)
            remaining = self._producer.flush(5.0)  # serves the purged frames' delivery reports
            for _ in range(remaining):
                self._record_failure("still unresolved after purge at close()")
        if hasattr(self._producer, "close"):  # confluent-kafka >= 2.10: drop connections now, not at GC
            self._producer.close()
        if self._failure_reasons:
            log.warning(
                "camera %s: %d of %d frames failed: %s", self.camera_id, self._failed, self._sent,
                "; ".join(f"{n}x {reason}" for reason, n in self._failure_reasons.most_common()),
            )
        return self.stats

    def __enter__(self) -> "CameraProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
