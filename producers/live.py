"""What the live camera sources (RTSP, GenICam) share: their counters and the stale-stream alarm.

A file or folder source ends; a live camera is a stream that can drop, stall and come back. Each
live source keeps a :class:`StreamHealth`:

* ``received``: frames decoded and handed to the producer. Every one of them is published: a source
  hands frames on one at a time and never drops one it has (no queue to overflow); when the producer
  is slower than the camera, the camera's frames wait in the network and the camera's own buffers,
  and those it throws away show up in ``gap_frames``.
* ``gap_frames``: frames the camera sent that we never received, as each source estimates them (the
  RTSP source from stream timestamps and its nominal frame rate, the GenICam source from the
  camera's frame ids).
* ``reconnects``: times the stream was opened again after it dropped.
* ``stale_alarms``: times no frame came for ``stale_after_s``. A watchdog thread raises the alarm
  (a WARNING log line and the ``lineguard_producer_stream_stale`` gauge at 1) even while the source
  is blocked in a read or waiting to reconnect; the next frame clears it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from . import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamCounters:
    received: int
    gap_frames: int
    reconnects: int
    stale_alarms: int

    def summary(self) -> str:
        """``received=N gap_frames=N reconnects=N stale_alarms=N``, as ``lineguard produce`` prints it."""
        return (f"received={self.received} gap_frames={self.gap_frames} "
                f"reconnects={self.reconnects} stale_alarms={self.stale_alarms}")


class StreamHealth:
    """Counters and the stale-stream alarm of one live camera (``stale_after_s`` 0: no alarm)."""

    def __init__(self, line_id: str, camera_id: str, description: str, stale_after_s: float) -> None:
        self.camera_id = camera_id
        self.description = description  # what the log lines name: a redacted URL, a device id
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._received = 0
        self._gap_frames = 0
        self._reconnects = 0
        self._stale_alarms = 0
        self._stale = False
        self._last_frame = time.monotonic()  # the stream's start counts as a frame: a camera that
        self._stop = threading.Event()       # never sends one is stale after stale_after_s too
        self._watchdog: threading.Thread | None = None
        self._m_received = metrics.STREAM_FRAMES_RECEIVED.labels(line_id, camera_id)
        self._m_gap = metrics.STREAM_GAP_FRAMES.labels(line_id, camera_id)
        self._m_reconnects = metrics.STREAM_RECONNECTS.labels(line_id, camera_id)
        self._m_stale = metrics.STREAM_STALE.labels(line_id, camera_id)
        self._m_stale_alarms = metrics.STREAM_STALE_ALARMS.labels(line_id, camera_id)
        metrics.STREAM_SECONDS_SINCE_FRAME.labels(line_id, camera_id).set_function(self.seconds_since_frame)
        self._m_stale.set(0)

    @property
    def counters(self) -> StreamCounters:
        with self._lock:
            return StreamCounters(self._received, self._gap_frames, self._reconnects, self._stale_alarms)

    def seconds_since_frame(self) -> float:
        return time.monotonic() - self._last_frame

    # -- events the source reports ---------------------------------------------------------------

    def frame_received(self) -> None:
        with self._lock:
            self._received += 1
            self._last_frame = time.monotonic()
            was_stale, self._stale = self._stale, False
        self._m_received.inc()
        if was_stale:
            self._m_stale.set(0)
            log.info("camera %s: frames again from %s", self.camera_id, self.description)

    def frames_missed(self, count: int, why: str) -> None:
        if count <= 0:
            return
        with self._lock:
            self._gap_frames += count
        self._m_gap.inc(count)
        log.warning("camera %s: %d frame(s) from %s never received (%s)", self.camera_id, count,
                    self.description, why)

    def reconnected(self) -> None:
        with self._lock:
            self._reconnects += 1
        self._m_reconnects.inc()
        log.info("camera %s: reconnected to %s", self.camera_id, self.description)

    # -- the stale-stream watchdog -----------------------------------------------------------------

    def start(self) -> None:
        """Start the watchdog (a daemon thread); :meth:`stop` ends it."""
        self._last_frame = time.monotonic()
        if self.stale_after_s <= 0 or self._watchdog is not None:
            return
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name=f"stale-watch-{self.camera_id}", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None

    def check_stale(self) -> bool:
        """Raise the alarm if no frame came for ``stale_after_s``; True while the stream is stale."""
        with self._lock:
            silent_s = time.monotonic() - self._last_frame
            if self._stale or silent_s < self.stale_after_s:
                return self._stale
            self._stale = True
            self._stale_alarms += 1
        self._m_stale.set(1)
        self._m_stale_alarms.inc()
        log.warning("camera %s: no frame from %s for %.1fs: stream stale", self.camera_id,
                    self.description, silent_s)
        return True

    def _watch(self) -> None:
        # Checking a few times per threshold keeps the alarm within a fraction of it late.
        interval = min(1.0, self.stale_after_s / 4)
        while not self._stop.wait(interval):
            self.check_stale()
