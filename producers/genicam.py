"""A GenICam camera through a GenTL producer (a ``.cti`` file), read with ``harvesters`` (the ``genicam`` extra).

``captured_at_ns`` comes from the camera's own clock: each buffer's timestamp (in ns when the GenTL
producer converts it, else in ticks of the device's timestamp frequency) is mapped onto the wall
clock by :class:`DeviceClock`, anchored at the first frame's receipt. Frames from a camera or producer
that reports no timestamp (some report 0) are stamped with the wall clock at receipt, and a log line
says so once.

``gap_frames`` counts the frame ids (GenTL block ids, one per frame the camera sent) that never
arrived. A device that stops answering is closed and opened again with back-off; a fetch that times
out is not a drop (a triggered camera waits for its trigger), only the stale alarm watches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.backoff import Backoff
from lineguard.config import ProducerConfig

from .live import StreamCounters, StreamHealth
from .sources import SourceImage

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class DeviceClock:
    """Maps a camera's timestamps (ticks at ``tick_hz``) to wall-clock ns since the epoch.

    Anchored at the first frame: its capture time is taken as its receipt time, every later frame is
    the anchor plus the camera's elapsed ticks. Two corrections keep the mapping honest:

    * a frame cannot be captured after it was received: if the mapping says so, the first frame had
      been delayed, and the anchor moves earlier to this frame's receipt;
    * the camera's clock going backwards (it was reset) or drifting more than ``max_skew_s`` behind
      the wall clock re-anchors at the current frame.
    """

    def __init__(self, tick_hz: float, max_skew_s: float = 1.0) -> None:
        if tick_hz <= 0:
            raise ValueError(f"tick frequency must be positive, got {tick_hz}")
        self.tick_hz = tick_hz
        self.max_skew_ns = int(max_skew_s * NS_PER_S)
        self.anchors = 0  # times the clock was (re-)anchored
        self._anchor_ticks: int | None = None
        self._anchor_wall_ns = 0
        self._last_ticks = 0

    def to_wall_ns(self, ticks: int, received_ns: int) -> int:
        """The wall-clock time of the camera timestamp ``ticks`` of a frame received at ``received_ns``."""
        if self._anchor_ticks is None or ticks < self._last_ticks:
            self._anchor(ticks, received_ns)
        self._last_ticks = ticks
        captured_ns = self._anchor_wall_ns + round((ticks - self._anchor_ticks) * NS_PER_S / self.tick_hz)
        if captured_ns > received_ns:
            self._anchor_wall_ns -= captured_ns - received_ns
            captured_ns = received_ns
        elif received_ns - captured_ns > self.max_skew_ns:
            log.warning("camera clock is %.3fs behind the wall clock; re-anchoring it",
                        (received_ns - captured_ns) / NS_PER_S)
            self._anchor(ticks, received_ns)
            captured_ns = received_ns
        return captured_ns

    def _anchor(self, ticks: int, received_ns: int) -> None:
        self._anchor_ticks, self._anchor_wall_ns = ticks, received_ns
        self.anchors += 1


# GenICam pixel formats (PFNC names) to RGB or grey uint8; OpenCV's Bayer names by their 2x2 tile.
_BAYER = {"BayerRG8": "COLOR_BayerRGGB2RGB", "BayerGR8": "COLOR_BayerGRBG2RGB",
          "BayerGB8": "COLOR_BayerGBRG2RGB", "BayerBG8": "COLOR_BayerBGGR2RGB"}
_MONO_HIGH_BITS = {"Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}  # unpacked, in uint16


def to_image(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A camera buffer's pixels as an H x W (grey) or H x W x 3 (RGB) uint8 array, copied.

    Mono10..16 keep their 8 most significant bits (the frame encodings carry 8-bit images).
    Raises ValueError for a format not listed here (packed and YUV formats, among others).
    """
    if pixel_format == "Mono8":
        return np.array(data, dtype=np.uint8).reshape(height, width)
    if pixel_format in _MONO_HIGH_BITS:
        shift = _MONO_HIGH_BITS[pixel_format] - 8
        return (np.asarray(data, dtype=np.uint16).reshape(height, width) >> shift).astype(np.uint8)
    if pixel_format in ("RGB8", "BGR8", "RGBa8", "BGRa8"):
        channels = 4 if pixel_format.endswith("a8") else 3
        pixels = np.asarray(data, dtype=np.uint8).reshape(height, width, channels)[:, :, :3]
        return np.ascontiguousarray(pixels[:, :, ::-1] if pixel_format.startswith("BGR") else pixels)
    if pixel_format in _BAYER:
        import cv2

        mosaic = np.asarray(data, dtype=np.uint8).reshape(height, width)
        return cv2.cvtColor(mosaic, getattr(cv2, _BAYER[pixel_format]))
    raise ValueError(f"unsupported pixel format {pixel_format!r}")


def buffer_ticks(buffer: Any, device_tick_hz: float | None) -> tuple[int, float] | None:
    """A harvesters buffer's camera timestamp as (ticks, ticks per second), or None when it has none."""
    try:
        ns = int(buffer.timestamp_ns)  # the producer converted it (GenTL BUFFER_INFO_TIMESTAMP_NS)
        if ns:
            return ns, NS_PER_S
    except Exception:  # noqa: BLE001 - GenTL's "not available" errors, whatever their class
        pass
    if not device_tick_hz:
        return None
    try:
        ticks = int(buffer.module.timestamp)  # raw ticks (GenTL BUFFER_INFO_TIMESTAMP)
    except Exception:  # noqa: BLE001
        return None
    return (ticks, device_tick_hz) if ticks else None


def device_tick_hz(acquirer: Any) -> float | None:
    """The device's timestamp frequency: from the GenTL device module, else its node map."""
    try:
        hz = acquirer.device.module.timestamp_frequency  # GenTL DEVICE_INFO_TIMESTAMP_FREQUENCY
        if hz:
            return float(hz)
    except Exception:  # noqa: BLE001
        pass
    node_map = acquirer.remote_device.node_map
    for name in ("GevTimestampTickFrequency", "TimestampTickFrequency", "DeviceTimestampTickFrequency"):
        try:
            hz = getattr(node_map, name).value
        except Exception:  # noqa: BLE001 - the camera has no such feature
            continue
        if hz:
            return float(hz)
    return None


def _timeout_errors() -> tuple[type[BaseException], ...]:
    try:
        from genicam.gentl import TimeoutException
    except ImportError:
        return (TimeoutError,)
    return (TimeoutError, TimeoutException)


def _new_harvester() -> Any:
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        raise RuntimeError("the genicam source needs harvesters: pip install 'lineguard[genicam]'") from exc
    return Harvester()


class GenICamSource:
    """The frames of one GenICam camera, forever: a device that stops answering is reopened with back-off.

    ``new_harvester`` makes the ``harvesters.core.Harvester``-like object and ``wall_clock_ns`` reads the
    wall clock (tests pass fakes).
    """

    def __init__(self, cti_path: str | Path, config: ProducerConfig, line_id: str = "", camera_id: str = "cam0",
                 new_harvester: Callable[[], Any] = _new_harvester,
                 wall_clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.cti_path = Path(cti_path)
        if not self.cti_path.is_file():
            raise FileNotFoundError(f"GenTL producer {self.cti_path} does not exist")
        self.config = config
        self.new_harvester = new_harvester
        self.wall_clock_ns = wall_clock_ns
        self.skipped = 0  # buffers that held no image we can convert
        self.clock_fallbacks = 0  # frames stamped at receipt: the camera gave no timestamp
        self.health = StreamHealth(line_id, camera_id, f"{self.cti_path.name}:{config.genicam_device or 0}",
                                   config.stream_stale_after_s)
        self.backoff = Backoff(config.stream_reconnect_initial_s, config.stream_reconnect_max_s)
        self.sessions = 0

    @property
    def counters(self) -> StreamCounters:
        return self.health.counters

    def _device_index(self, harvester: Any) -> int:
        wanted = self.config.genicam_device
        devices = harvester.device_info_list
        if not devices:
            raise RuntimeError(f"{self.cti_path.name} lists no device")
        if not wanted:
            return 0
        if wanted.isdigit() and int(wanted) < len(devices):
            return int(wanted)
        for index, info in enumerate(devices):
            if wanted in (getattr(info, "id_", None), getattr(info, "serial_number", None),
                          getattr(info, "user_defined_name", None)):
                return index
        raise RuntimeError(f"no device {wanted!r} among {[getattr(i, 'id_', '?') for i in devices]}")

    def _connect(self) -> tuple[Any, Any]:
        harvester = self.new_harvester()
        try:
            harvester.add_file(str(self.cti_path))
            harvester.update()
            acquirer = harvester.create(self._device_index(harvester))
            acquirer.start()
        except BaseException:
            harvester.reset()
            raise
        return harvester, acquirer

    def __iter__(self) -> Iterator[SourceImage]:
        self.health.start()
        failed_opens = 0
        try:
            while True:
                try:
                    harvester, acquirer = self._connect()
                except Exception as exc:  # noqa: BLE001 - GenTL and harvesters raise many kinds
                    delay = self.backoff.delay(failed_opens)
                    failed_opens += 1
                    log.warning("cannot open GenICam device through %s (attempt %d): %s; retrying in %.1fs",
                                self.cti_path.name, failed_opens, exc, delay)
                    time.sleep(delay)
                    continue
                failed_opens = 0
                self.sessions += 1
                if self.sessions > 1:
                    self.health.reconnected()
                try:
                    yield from self._frames(acquirer)
                finally:
                    self._close(harvester, acquirer)
        finally:
            self.health.stop()

    def _frames(self, acquirer: Any) -> Iterator[SourceImage]:
        """The frames of one session; returns when the device fails."""
        configured_hz = self.config.genicam_timestamp_tick_hz
        tick_hz = configured_hz or device_tick_hz(acquirer)
        clock: DeviceClock | None = None
        timeouts = _timeout_errors()
        last_frame_id: int | None = None
        while True:
            try:
                with acquirer.fetch(timeout=self.config.stream_read_timeout_s) as buffer:
                    received_ns = self.wall_clock_ns()
                    component = buffer.payload.components[0]
                    pixel_format = str(component.data_format)
                    try:
                        image = to_image(component.data, component.width, component.height, pixel_format)
                    except ValueError as exc:
                        image = None
                        self.skipped += 1
                        log.error("skipping a frame: %s", exc)
                    frame_id = int(buffer.frame_id)
                    camera_time = buffer_ticks(buffer, tick_hz)
            except timeouts:
                continue  # no frame yet: a triggered camera waits; the stale alarm watches the silence
            except Exception as exc:  # noqa: BLE001
                log.warning("GenICam device through %s failed: %s; reconnecting", self.cti_path.name, exc)
                return
            # Block ids only grow within a session; a smaller one is a wrap (16-bit on GigE Vision 1) or reset.
            if last_frame_id is not None and frame_id > last_frame_id:
                self.health.frames_missed(frame_id - last_frame_id - 1, "camera frame ids skipped")
            last_frame_id = frame_id
            if image is None:
                continue
            if camera_time is None:
                captured_ns, clock_name = received_ns, "receipt"
                if self.clock_fallbacks == 0:
                    log.warning("the camera gives no timestamps: frames are stamped when received")
                self.clock_fallbacks += 1
            else:
                ticks, hz = camera_time
                if clock is None or clock.tick_hz != hz:
                    clock = DeviceClock(hz)
                captured_ns, clock_name = clock.to_wall_ns(ticks, received_ns), "camera"
            self.health.frame_received()
            yield SourceImage(image, f"genicam#{self.sessions}/{frame_id}",
                              {"source": self.cti_path.name, "camera_frame_id": frame_id, "pixel_format": pixel_format,
                               "clock": clock_name},
                              captured_at_ns=captured_ns)

    @staticmethod
    def _close(harvester: Any, acquirer: Any) -> None:
        for step in (acquirer.stop, acquirer.destroy, harvester.reset):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - closing a failed device fails too; go on
                log.debug("closing the GenICam device: %s", exc)
