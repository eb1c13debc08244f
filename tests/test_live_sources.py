"""Live camera sources: RTSP against a real GStreamer RTSP server that the test restarts mid-stream, with
every received frame counted on the real broker; GenICam through harvesters against the software GenTL
producer that the ``genicam`` wheel ships (Viky), and its timestamp mapping against a fake harvester
(no camera with a clock of its own is available here)."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from prometheus_client import REGISTRY

from lineguard.components import Component, component_env
from lineguard.config import ProducerConfig, Settings
from lineguard.kafka.offsets import count_messages
from lineguard.kafka.read import read_topic
from lineguard.producers.genicam import NS_PER_S, DeviceClock, GenICamSource, to_image
from lineguard.producers.live import StreamHealth
from lineguard.producers.rtsp import ffmpeg_options, redact
from lineguard.schemas import Frame, ImageLimits, topics
from lineguard.schemas.image import decode

RTSP_DIR = Path(__file__).parent / "rtsp"
sys.path.insert(0, str(RTSP_DIR))
from server import decode_frame_number  # noqa: E402 - tests/rtsp/server.py, also run by /usr/bin/python3

SYSTEM_PYTHON = "/usr/bin/python3"


# -- small parts -------------------------------------------------------------------------------------


def test_redact_hides_the_password_and_ffmpeg_options() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.7:554/stream1") == "rtsp://admin:***@10.0.0.7:554/stream1"
    assert redact("rtsp://10.0.0.7/stream1") == "rtsp://10.0.0.7/stream1"
    assert ffmpeg_options("udp", False) == "rtsp_transport;udp"
    assert ffmpeg_options("tcp", True).startswith("rtsp_transport;tcp|fflags;nobuffer")


def test_stale_alarm_logs_a_warning_sets_the_gauge_and_clears(caplog) -> None:
    camera = f"cam-{uuid.uuid4().hex[:6]}"
    health = StreamHealth("lineX", camera, "rtsp://somewhere", stale_after_s=0.3)

    def gauge() -> float:
        return REGISTRY.get_sample_value("lineguard_producer_stream_stale", {"line": "lineX", "camera": camera})

    with caplog.at_level(logging.INFO, logger="lineguard.producers.live"):
        health.start()
        try:
            time.sleep(0.6)
            assert gauge() == 1.0
            health.frame_received()
            assert gauge() == 0.0
        finally:
            health.stop()
    stale = [r for r in caplog.records if "stream stale" in r.getMessage()]
    assert len(stale) == 1 and stale[0].levelno == logging.WARNING
    assert health.counters.stale_alarms == 1 and health.counters.received == 1
    assert REGISTRY.get_sample_value("lineguard_producer_stream_stale_alarms_total",
                                     {"line": "lineX", "camera": camera}) == 1.0


# -- GenICam: the conversion logic against a fake harvester --------------------------------------------


def test_device_clock_maps_ticks_to_the_wall_clock() -> None:
    clock = DeviceClock(tick_hz=125_000_000)  # GigE Vision cameras often count at 125 MHz
    t0 = 1_700_000_000 * NS_PER_S
    assert clock.to_wall_ns(5_000, t0) == t0  # anchored at the first frame's receipt
    # 50 ms of camera time later, received 60 ms later: captured 50 ms after the first frame.
    assert clock.to_wall_ns(5_000 + 6_250_000, t0 + 60_000_000) == t0 + 50_000_000
    # A frame the mapping would put after its own receipt moves the anchor earlier.
    assert clock.to_wall_ns(5_000 + 12_500_000, t0 + 95_000_000) == t0 + 95_000_000
    assert clock.to_wall_ns(5_000 + 18_750_000, t0 + 200_000_000) == t0 + 145_000_000
    # The camera's clock reset (ticks went back): re-anchored at that frame.
    assert clock.to_wall_ns(10, t0 + 300_000_000) == t0 + 300_000_000
    # Drifted more than max_skew behind the wall clock: re-anchored.
    assert clock.to_wall_ns(10 + 125_000_000, t0 + 2_400_000_000) == t0 + 2_400_000_000
    assert clock.anchors == 3


def test_to_image_converts_the_usual_pixel_formats() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(to_image(rgb.ravel(), 3, 2, "RGB8"), rgb)
    assert np.array_equal(to_image(rgb[:, :, ::-1].ravel(), 3, 2, "BGR8"), rgb)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(to_image(rgba.ravel(), 3, 2, "RGBa8"), rgb)
    assert to_image(np.full(6, 4095, np.uint16), 3, 2, "Mono12").tolist() == [[255] * 3] * 2
    assert to_image(np.zeros(16, np.uint8), 4, 4, "BayerRG8").shape == (4, 4, 3)
    with pytest.raises(ValueError, match="Mono12p"):
        to_image(np.zeros(6, np.uint8), 3, 2, "Mono12p")


class _FakeBuffer:
    def __init__(self, frame_id: int, ticks: int | None) -> None:
        self.frame_id = frame_id
        self.module = SimpleNamespace(timestamp=ticks or 0)
        data = np.full(4 * 4, frame_id % 256, np.uint8)
        self.payload = SimpleNamespace(components=[SimpleNamespace(data=data, width=4, height=4, data_format="Mono8")])

    @property
    def timestamp_ns(self) -> int:
        raise RuntimeError("GenTL: timestamp_ns not available")  # the producer leaves ticks unconverted

    def __enter__(self) -> "_FakeBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _FakeAcquirer:
    """A camera with a 1 MHz clock sending the given frames, then failing (as an unplugged camera)."""

    def __init__(self, frames: list[tuple[int, int | None]]) -> None:
        self.frames = list(frames)
        self.device = SimpleNamespace(module=SimpleNamespace(timestamp_frequency=1_000_000))
        self.remote_device = SimpleNamespace(node_map=SimpleNamespace())

    def start(self) -> None:
        pass

    def fetch(self, timeout: float) -> _FakeBuffer:
        if not self.frames:
            raise OSError("device lost")
        return _FakeBuffer(*self.frames.pop(0))

    def stop(self) -> None:
        pass

    def destroy(self) -> None:
        pass


class _FakeHarvester:
    def __init__(self, sessions: list[_FakeAcquirer]) -> None:
        self.sessions = sessions
        self.device_info_list = [SimpleNamespace(id_="fake0", serial_number="S0", user_defined_name=None)]

    def add_file(self, path: str) -> None:
        pass

    def update(self) -> None:
        pass

    def create(self, index: int) -> _FakeAcquirer:
        return self.sessions.pop(0)

    def reset(self) -> None:
        pass


def test_genicam_source_stamps_camera_time_counts_gaps_and_reconnects(tmp_path: Path) -> None:
    cti = tmp_path / "fake.cti"
    cti.write_bytes(b"")
    # Session 1: frame ids 1, 2, 5 (3 and 4 lost), 10 ms apart on the camera's 1 MHz clock.
    # Session 2 (after the device failed): a camera without timestamps.
    sessions = [_FakeAcquirer([(1, 1_000), (2, 11_000), (5, 41_000)]), _FakeAcquirer([(1, None), (2, None)])]
    harvester = _FakeHarvester(sessions)
    config = ProducerConfig(stream_reconnect_initial_s=0.01, stream_reconnect_max_s=0.01, stream_stale_after_s=0)
    received = iter(range(1_700_000_000 * NS_PER_S, 1_800_000_000 * NS_PER_S, 50_000_000))  # a frame every 50 ms
    source = GenICamSource(cti, config, "lineG", "camG", new_harvester=lambda: harvester,
                           wall_clock_ns=lambda: next(received))
    items = []
    for item in source:
        items.append(item)
        if len(items) == 5:
            break
    # Camera time, not receipt time: 10 and 40 ms after the first frame (received 50 and 100 ms after it).
    first, second, fifth_id = items[0].captured_at_ns, items[1].captured_at_ns, items[2].captured_at_ns
    assert second - first == 10_000_000 and fifth_id - first == 40_000_000
    assert items[3].captured_at_ns - first == 150_000_000  # no timestamps: the receipt time
    assert [i.meta["camera_frame_id"] for i in items] == [1, 2, 5, 1, 2]
    assert [i.meta["clock"] for i in items] == ["camera"] * 3 + ["receipt"] * 2
    assert items[0].image.shape == (4, 4)
    counters = source.counters
    assert (counters.received, counters.gap_frames, counters.reconnects) == (5, 2, 1)
    assert source.clock_fallbacks == 2


# -- GenICam: a real GenTL producer --------------------------------------------------------------------


def _viky_cti() -> Path:
    genicam = pytest.importorskip("genicam", reason="the genicam extra is not installed")
    pytest.importorskip("harvesters", reason="the genicam extra is not installed")
    cti = Path(genicam.__file__).parent / "viky.cti"
    if not cti.is_file():
        pytest.skip("this genicam wheel ships no viky.cti")
    return cti


def test_genicam_source_streams_from_a_real_gentl_producer() -> None:
    """Viky (the software GenTL producer in the `genicam` wheel) through harvesters: real GenTL calls,
    real buffers. It reports no timestamps, so the frames carry their receipt time."""
    cti = _viky_cti()
    source = GenICamSource(cti, ProducerConfig(stream_stale_after_s=0), "lineV", "camV")
    items = []
    for item in source:
        items.append(item)
        if len(items) == 5:
            break
    assert all(item.image.shape == (400, 400, 3) and item.image.dtype == np.uint8 for item in items)
    ids = [item.meta["camera_frame_id"] for item in items]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert {item.meta["clock"] for item in items} == {"receipt"}
    assert source.counters.gap_frames == 0 and source.counters.received == 5


# -- RTSP: a real server, restarted mid-stream, and the real broker --------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rtsp_server_available() -> bool:
    check = ('import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst, GstRtspServer; '
             'Gst.init(None); assert Gst.ElementFactory.find("x264enc")')
    return shutil.which(SYSTEM_PYTHON) is not None and subprocess.run(
        [SYSTEM_PYTHON, "-c", check], capture_output=True).returncode == 0


class _RtspServer:
    """tests/rtsp/server.py under the system Python; frame numbers follow the wall clock from ``epoch``."""

    def __init__(self, port: int, fps: int, epoch: float, log_path: Path) -> None:
        self.args = [SYSTEM_PYTHON, str(RTSP_DIR / "server.py"), "--port", str(port), "--fps", str(fps),
                     "--epoch", repr(epoch)]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while "ready" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Gone at once, as a camera losing power: no RTSP teardown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.kafka
def test_rtsp_source_reconnects_counts_the_gap_and_publishes_every_frame(stack, settings: Settings,
                                                                           tmp_path: Path) -> None:
    if not _rtsp_server_available():
        pytest.fail("GStreamer's RTSP server is not installed: run `make rtsp-deps` (tests/rtsp/install.sh)")
    fps, count, outage_s = 20, 160, 3.0
    line = f"rtsp-{uuid.uuid4().hex[:8]}"
    topic = topics.frames(line)
    port = _free_port()
    server = _RtspServer(port, fps, epoch=time.time(), log_path=tmp_path / "rtsp-server.log")
    server.start()
    env = component_env(settings.kafka.bootstrap_servers, tmp_path / "state",
                        LINEGUARD_PRODUCER__STREAM_STALE_AFTER_S="2.0",
                        LINEGUARD_PRODUCER__STREAM_READ_TIMEOUT_S="3.0",
                        LINEGUARD_PRODUCER__STREAM_RECONNECT_INITIAL_S="0.2",
                        LINEGUARD_PRODUCER__STREAM_RECONNECT_MAX_S="1.0")
    producer = Component(["produce", "--line", line, "--camera", "ipcam", "--source", f"rtsp://127.0.0.1:{port}/cam",
                          "--count", str(count)], env, tmp_path / "produce.log")
    try:
        # Let about 50 frames through, then pull the plug on the camera and bring it back.
        deadline = time.monotonic() + 90
        while _published(settings, topic) < 50:
            assert producer.alive(), producer.tail(30)
            assert time.monotonic() < deadline, f"no frames published:\n{producer.tail(30)}"
            time.sleep(0.2)
        server.kill()
        time.sleep(outage_s)
        server.start()
        assert producer.wait(120) == 0, producer.tail(40)
    finally:
        server.kill()
        if producer.alive():
            producer.stop()
    output = producer.output()
    summary = re.search(r"produce: line=\S+ sent=(\d+) delivered=(\d+) failed=(\d+) skipped=(\d+) "
                        r"received=(\d+) gap_frames=(\d+) reconnects=(\d+) stale_alarms=(\d+)", output)
    assert summary, output[-3000:]
    sent, delivered, failed, _skipped, received, gap_frames, reconnects, stale_alarms = map(int, summary.groups())
    published = count_messages(settings.kafka, topic)

    # What the camera really sent, read back from the numbers burned into the frames on the topic.
    records = read_topic(settings.kafka, topic)
    frames = [Frame.decode(record.value) for record in records]
    numbers = [decode_frame_number(cv2.cvtColor(decode(f.encoding, f.image, ImageLimits()), cv2.COLOR_RGB2GRAY))
               for f in sorted(frames, key=lambda f: f.seq)]
    steps = [b - a for a, b in zip(numbers, numbers[1:])]
    outage_step = max(steps)
    true_gap = sum(step - 1 for step in steps)
    print(f"\nrtsp: received={received} published={published} gap_frames={gap_frames} reconnects={reconnects} "
          f"stale_alarms={stale_alarms} true_gap={true_gap} (outage step {outage_step})")

    assert received == sent == delivered == published == count and failed == 0
    assert None not in numbers and all(step >= 1 for step in steps), numbers  # no duplicate, in order
    assert reconnects == 1 and stale_alarms >= 1
    assert "stream stale" in output
    # The restart lost about outage_s * fps frames; the estimate (wall clock across the reconnect) is
    # within a quarter second of the truth.
    assert outage_step - 1 >= outage_s * fps * 0.9
    assert abs(gap_frames - true_gap) <= fps // 4, (gap_frames, true_gap)
    captured = [f.captured_at_ns for f in sorted(frames, key=lambda f: f.seq)]
    assert captured == sorted(captured)  # stamped at receipt, in order


def _published(settings: Settings, topic: str) -> int:
    try:
        return count_messages(settings.kafka, topic)
    except Exception:  # noqa: BLE001 - the topic is created by the producer once it starts
        return 0



def test_cli_builds_live_sources(tmp_path: Path) -> None:
    import argparse

    from lineguard.config import load_settings
    from lineguard.producers import cli as producers_cli
    from lineguard.producers.rtsp import RtspSource

    parser = argparse.ArgumentParser()
    producers_cli.register(parser.add_subparsers(dest="command", required=True))
    settings = load_settings(state_dir=str(tmp_path / "state"))
    args = parser.parse_args(["produce", "--line", "l1", "--source", "rtsp://cam.local:554/s1"])
    assert isinstance(producers_cli._build_source(args, settings), RtspSource)
    args = parser.parse_args(["produce", "--line", "l1", "--source", f"genicam:{tmp_path / 'missing.cti'}"])
    with pytest.raises(FileNotFoundError, match="missing.cti"):
        producers_cli._build_source(args, settings)
