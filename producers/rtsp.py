"""An RTSP camera (``rtsp://`` or ``rtsps://``), read with OpenCV's FFmpeg backend, reconnecting when it drops.

The source yields each decoded frame as soon as it has it, stamped ``captured_at_ns`` = the wall
clock when FFmpeg handed the frame over (capture time plus network and decode delay; with
``producer.rtsp_low_latency``, FFmpeg's start-up buffering is off so the delay stays that small from
the first frame). RTSP's own timestamps restart with every session and are only used to find gaps.

``gap_frames`` (see producers/live.py) is estimated two ways, both from the camera's nominal frame
rate (``producer.stream_fps``, else the rate the stream announces):

* within a session, from the frames' stream timestamps: a step of ``k`` frame periods between two
  frames received means ``k - 1`` frames were lost on the way (UDP loss, the camera's send buffer
  overflowing while we were slow, undecodable frames);
* across a reconnect, from the wall clock: the time between the last frame before the drop and the
  first frame after it, times the frame rate, less one. This counts every frame the camera made while
  we had no stream, assuming it kept running at its nominal rate.

Without a usable frame rate (none announced, nor set) gaps are not estimated, and a log line says so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from lineguard.backoff import Backoff
from lineguard.config import ProducerConfig

from .live import StreamCounters, StreamHealth
from .sources import SourceImage

log = logging.getLogger(__name__)

RTSP_SCHEMES = ("rtsp://", "rtsps://")
# OpenCV reads FFmpeg's demuxer options from this variable when it opens a stream.
_FFMPEG_OPTIONS_VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# An announced rate outside this range is a placeholder (RTP's 90 kHz clock, 0), not the camera's.
_PLAUSIBLE_FPS = (0.1, 1000.0)


def redact(url: str) -> str:
    """The URL without its password, for logs and frame meta."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def ffmpeg_options(transport: str, low_latency: bool) -> str:
    """OpenCV's ``key;value|key;value`` form of FFmpeg's RTSP demuxer options."""
    options = {"rtsp_transport": transport}
    if low_latency:
        # No probing ahead (the stream's parameters come in the SDP) and no input buffering: otherwise
        # FFmpeg reads about a second of frames while opening and then hands them over all at once.
        options.update(fflags="nobuffer", flags="low_delay", probesize="32", analyzeduration="0")
    return "|".join(f"{key};{value}" for key, value in options.items())


class RtspSource:
    """The frames of one RTSP camera, forever: a dropped stream is reopened with back-off."""

    def __init__(self, url: str, config: ProducerConfig, line_id: str = "", camera_id: str = "cam0") -> None:
        if not url.startswith(RTSP_SCHEMES):
            raise ValueError(f"not an RTSP URL: {redact(url)!r}")
        self.url = url
        self.config = config
        self.skipped = 0  # frames FFmpeg handed over but could not decode
        self.health = StreamHealth(line_id, camera_id, redact(url), config.stream_stale_after_s)
        self.backoff = Backoff(config.stream_reconnect_initial_s, config.stream_reconnect_max_s)
        self.sessions = 0  # streams opened so far

    @property
    def counters(self) -> StreamCounters:
        return self.health.counters

    def _open(self):  # noqa: ANN202 - cv2.VideoCapture, or None when the camera cannot be reached
        import cv2

        # A user's own FFmpeg options win (they are read from the environment, as OpenCV documents).
        os.environ.setdefault(_FFMPEG_OPTIONS_VAR, ffmpeg_options(self.config.rtsp_transport,
                                                                  self.config.rtsp_low_latency))
        timeout_ms = int(self.config.stream_read_timeout_s * 1000)
        capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _nominal_fps(self, capture) -> float | None:  # noqa: ANN001 - cv2.VideoCapture
        import cv2

        if self.config.stream_fps:
            return self.config.stream_fps
        fps = capture.get(cv2.CAP_PROP_FPS)
        if _PLAUSIBLE_FPS[0] <= fps <= _PLAUSIBLE_FPS[1]:
            return fps
        log.warning("%s announces no usable frame rate (%r): gaps are not estimated; set producer.stream_fps",
                    redact(self.url), fps)
        return None

    def __iter__(self) -> Iterator[SourceImage]:
        import cv2

        self.health.start()
        failed_opens = 0
        last_receipt_ns: int | None = None  # the last frame of any session, for the reconnect gap
        fps: float | None = None
        try:
            while True:
                capture = self._open()
                if capture is None:
                    delay = self.backoff.delay(failed_opens)
                    failed_opens += 1
                    log.warning("cannot open %s (attempt %d); retrying in %.1fs", redact(self.url),
                                failed_opens, delay)
                    time.sleep(delay)
                    continue
                self.sessions += 1
                if self.sessions > 1:
                    self.health.reconnected()
                fps = self._nominal_fps(capture) or fps
                first_in_session = True
                last_pts_ms: float | None = None
                try:
                    while capture.grab():  # False: the stream ended, dropped or sent nothing for the read timeout
                        received_ns = time.time_ns()
                        ok, bgr = capture.retrieve()
                        if not ok:
                            self.skipped += 1
                            continue
                        pts_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                        if fps and first_in_session and last_receipt_ns is not None:
                            missed = round((received_ns - last_receipt_ns) / 1e9 * fps) - 1
                            self.health.frames_missed(missed, "while reconnecting")
                        elif fps and last_pts_ms is not None and pts_ms > last_pts_ms:
                            missed = round((pts_ms - last_pts_ms) * fps / 1000) - 1
                            self.health.frames_missed(missed, "stream timestamps skipped")
                        first_in_session = False
                        failed_opens = 0  # a frame came: the next drop starts the back-off afresh
                        last_pts_ms, last_receipt_ns = pts_ms, received_ns
                        self.health.frame_received()
                        yield SourceImage(
                            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            f"rtsp#{self.sessions}@{pts_ms:.0f}ms",
                            {"source": redact(self.url), "stream_session": self.sessions, "stream_pts_ms": pts_ms},
                            captured_at_ns=received_ns,
                        )
                finally:
                    capture.release()
                log.warning("stream %s dropped after session %d; reconnecting", redact(self.url), self.sessions)
        finally:
            self.health.stop()
