"""Frame sources and the camera producer; the Kafka tests run against the local broker (``stack``)."""

from __future__ import annotations

import argparse
import itertools
import logging
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lineguard.config import Settings
from lineguard.producers import cli as producers_cli
from lineguard.producers.camera import CameraProducer, FrameTooLargeError, _clean_meta
from lineguard.producers.sources import FolderSource, SyntheticSource, VideoSource
from lineguard.producers.synthetic import DEFECT_KINDS, SyntheticCamera
from lineguard.schemas import Frame, ImageLimits, topics
from lineguard.schemas.image import decode

# -- helpers ---------------------------------------------------------------------------------


def _solid(color: tuple[int, int, int], h: int = 24, w: int = 32) -> np.ndarray:
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:] = color
    return image


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse with only the produce subcommand registered (other parts' CLIs stay out of these tests)."""
    parser = argparse.ArgumentParser()
    producers_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _unique_line(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- sources ---------------------------------------------------------------------------------


def test_folder_source_sorted_recursive_and_skips_corrupt(tmp_path: Path, caplog) -> None:
    written = {
        "a.png": _solid((200, 10, 10)),
        "b/c.png": _solid((10, 200, 10)),
        "b/d/e.PNG": _solid((10, 10, 200)),
        "z.png": _solid((90, 90, 90)),
    }
    for name, image in written.items():
        _write_png(tmp_path / name, image)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (tmp_path / "notes.txt").write_text("not an image, not a candidate")

    source = FolderSource(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lineguard.producers.sources"):
        items = list(source)
    assert [item.name for item in items] == ["a.png", "b/c.png", "b/d/e.PNG", "z.png"]
    for item in items:
        assert np.array_equal(item.image, written[item.name])
        assert item.meta == {"source": item.name}
    assert source.skipped == 1
    assert "broken.png" in caplog.text
    # Deterministic: a second pass gives the same order and counts the corrupt file again.
    assert [item.name for item in source] == [item.name for item in items]
    assert source.skipped == 2


def test_folder_source_loops_and_stops_on_an_all_corrupt_folder(tmp_path: Path) -> None:
    for i in range(3):
        _write_png(tmp_path / "ok" / f"{i}.png", _solid((i * 50, 0, 0)))
    looped = [item.name for item in itertools.islice(FolderSource(tmp_path / "ok", loop=True), 7)]
    assert looped == ["0.png", "1.png", "2.png"] * 2 + ["0.png"]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    bad = FolderSource(tmp_path / "bad", loop=True)
    assert list(bad) == []  # ends instead of spinning forever
    assert bad.skipped == 1

    with pytest.raises(FileNotFoundError):
        FolderSource(tmp_path / "missing")


def test_folder_source_replays_an_mvtec_category_with_ground_truth(tmp_path: Path) -> None:
    root = tmp_path / "washer"
    SyntheticCamera("washer", size=48, seed=4).write_mvtec(root, n_train=2, n_test_good=2, n_test_defect=5)
    items = list(FolderSource(root))
    assert len(items) == 7  # test/ only: train/ and ground_truth/ are not replayed
    assert all(item.name.startswith("test/") for item in items)
    by_defect = {item.meta["defect"]: item.meta["gt_defective"] for item in items}
    assert by_defect == {"good": False, **{kind: True for kind in DEFECT_KINDS}}


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_source_reads_rgb_frames_and_loops(tmp_path: Path) -> None:
    colors = [(220, 30, 30), (30, 220, 30), (30, 30, 220)] * 4  # red, green, blue, in RGB
    frames = [np.full((48, 64, 3), c, dtype=np.uint8) for c in colors]
    video = tmp_path / "line.avi"
    _write_video(video, frames)

    source = VideoSource(video)
    items = list(source)
    assert len(items) == 12 and source.skipped == 0
    assert source.fps == pytest.approx(10.0)
    for item, color in zip(items, colors):
        assert item.image.shape == (48, 64, 3) and item.image.dtype == np.uint8
        # RGB order (OpenCV decodes BGR): the dominant channel is the one written.
        assert int(np.argmax(item.image.reshape(-1, 3).mean(axis=0))) == int(np.argmax(color))
        assert np.abs(item.image.astype(int) - np.array(color)).mean() < 12  # MJPEG is lossy
    assert [item.meta["video_frame"] for item in items] == list(range(12))

    looped = list(itertools.islice(VideoSource(video, loop=True), 30))
    assert [item.meta["video_frame"] for item in looped] == list(range(12)) * 2 + list(range(6))

    not_a_video = tmp_path / "text.avi"
    not_a_video.write_text("hello")
    with pytest.raises(OSError):
        list(VideoSource(not_a_video))
    with pytest.raises(FileNotFoundError):
        VideoSource(tmp_path / "missing.mp4")


def test_synthetic_source_carries_ground_truth() -> None:
    camera = SyntheticCamera("nut", size=64, seed=9, defect_rate=0.5)
    items = list(SyntheticSource(camera, count=20, start=100))
    assert len(items) == 20
    for offset, item in enumerate(items):
        expected = camera.render(100 + offset)
        assert np.array_equal(item.image, expected.image)
        assert item.meta["gt_defective"] is expected.defective
        assert item.meta["defect"] == (expected.defect or "good")
        assert item.meta["synthetic_index"] == 100 + offset
    assert any(item.meta["gt_defective"] for item in items)
    assert not all(item.meta["gt_defective"] for item in items)


def test_clean_meta_fits_the_frame_contract() -> None:
    meta = _clean_meta({"a": None, "b": np.int64(3), "c": np.float32(0.5), "d": Path("x/y"), "e": True})
    assert meta == {"b": 3, "c": 0.5, "d": "x/y", "e": True}
    assert type(meta["b"]) is int
    assert len(_clean_meta({f"k{i}": i for i in range(100)})) == 64


# -- producer without a broker: message building and the size guard ----------------------------


def _offline_settings(**kafka: object) -> Settings:
    # Port 9 (discard) is closed on loopback: the client never reaches a broker.
    return Settings(kafka={"bootstrap_servers": "127.0.0.1:9", **kafka})


def test_frames_are_built_to_the_contract() -> None:
    producer = CameraProducer(_offline_settings(), "line-7", camera_id="cam-3", product="nut", encoding="png")
    try:
        image = SyntheticCamera("nut", size=64, seed=1).render(0).image
        frames = [producer.build_frame(image, {"defect": "good", "skip": None}) for _ in range(3)]
        assert [f.seq for f in frames] == [0, 1, 2]
        assert len({f.frame_id for f in frames}) == 3
        decoded = Frame.decode(frames[1].encode())
        assert (decoded.line_id, decoded.camera_id, decoded.product, decoded.encoding) == ("line-7", "cam-3", "nut", "png")
        assert decoded.meta == {"defect": "good"}
        assert abs(decoded.captured_at_ns - time.time_ns()) < 5e9
        assert np.array_equal(decode(decoded.encoding, decoded.image, ImageLimits()), image)  # png is lossless
        assert producer.topic == topics.frames("line-7")
    finally:
        producer.close(timeout_s=0)


def test_part_id_is_taken_from_the_named_meta_field() -> None:
    producer = CameraProducer(_offline_settings(), "line-7", camera_id="top", part_id_meta="serial")
    try:
        image = SyntheticCamera("nut", size=32, seed=1).render(0).image
        tagged = producer.build_frame(image, {"serial": 4711})
        untagged = producer.build_frame(image, {"other": "x"})
        assert Frame.decode(tagged.encode()).part_id == "4711" and untagged.part_id is None
        assert CameraProducer(_offline_settings(), "line-7").build_frame(image, {"serial": 1}).part_id is None
    finally:
        producer.close(timeout_s=0)


def test_oversized_frame_is_refused_and_counted_failed(caplog) -> None:
    settings = _offline_settings(message_max_bytes=1024 * 1024)
    producer = CameraProducer(settings, "line-7", encoding="raw")
    big = np.zeros((1024, 1024, 3), dtype=np.uint8)  # 3 MiB raw
    with caplog.at_level(logging.ERROR, logger="lineguard.producers.camera"):
        with pytest.raises(FrameTooLargeError, match="message_max_bytes"):
            producer.send(big)
    assert producer.stats.failed == 1 and producer.stats.sent == 1
    assert "exceeds kafka.message_max_bytes" in caplog.text
    stats = producer.close(timeout_s=0)
    assert (stats.sent, stats.delivered, stats.failed) == (1, 0, 1)
    with pytest.raises(ValueError, match="unknown encoding"):
        CameraProducer(settings, "line-7", encoding="bmp")
    with pytest.raises(ValueError, match="line id"):
        CameraProducer(settings, "line 7/../x")


def test_close_accounts_for_every_frame_when_no_broker_answers(caplog) -> None:
    producer = CameraProducer(_offline_settings(), "line-7")
    for _ in range(3):
        producer.send(np.zeros((32, 32, 3), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="lineguard.producers.camera"):
        stats = producer.close(timeout_s=0.5)
    # Unresolved frames are purged and reported failed, never left uncounted.
    assert (stats.sent, stats.delivered, stats.failed) == (3, 0, 3)
    assert "Purged" in caplog.text
    assert producer.close() == stats  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        producer.send(np.zeros((32, 32, 3), dtype=np.uint8))


def test_cli_writes_a_dataset(tmp_path: Path, capsys) -> None:
    args = _parse(["produce", "--write-dataset", str(tmp_path / "bolt"), "--product", "bolt", "--size", "48",
                   "--n-train", "3", "--n-test-good", "2", "--n-test-defect", "5"])
    assert args.handler(args, Settings()) == 0
    assert "train/good=3" in capsys.readouterr().out
    assert len(list((tmp_path / "bolt" / "train" / "good").glob("*.png"))) == 3
    assert len(list((tmp_path / "bolt" / "ground_truth").rglob("*_mask.png"))) == 5


def test_cli_rejects_bad_usage(capsys) -> None:
    args = _parse(["produce", "--source", "synthetic"])
    assert args.handler(args, _offline_settings()) == 2
    assert "--line is required" in capsys.readouterr().err
    args = _parse(["produce", "--line", "l1", "--source", "webcam:0"])
    assert args.handler(args, _offline_settings()) == 2
    assert "expected synthetic" in capsys.readouterr().err


# -- against the real broker ---------------------------------------------------------------


@pytest.mark.kafka
def test_frames_round_trip_through_kafka(stack, settings: Settings) -> None:
    from lineguard.kafka import ensure_topics, read_topic

    line = _unique_line("prod")
    ensure_topics(settings.kafka, [line])
    camera = SyntheticCamera("washer", size=96, seed=5, defect_rate=0.3)
    counts = {"cam-a": 30, "cam-b": 20}  # 50 frames from two cameras, in two encodings
    for (camera_id, n), encoding in zip(counts.items(), ("jpeg", "raw")):
        with CameraProducer(settings, line, camera_id=camera_id, encoding=encoding) as producer:
            producer.run(SyntheticSource(camera), count=n)
        stats = producer.stats  # after __exit__ flushed
        assert (stats.sent, stats.delivered, stats.failed, stats.skipped) == (n, n, 0, 0)

    messages = read_topic(settings.kafka, topics.frames(line))  # flushed: all 50 are there, and any excess
    assert len(messages) == 50
    seqs: dict[tuple[int, str], list[int]] = {}
    limits = ImageLimits.from_config(settings.limits)
    for msg in messages:
        frame = Frame.decode(msg.value, max_bytes=settings.kafka.message_max_bytes)
        assert msg.key == frame.camera_id.encode()
        assert frame.line_id == line and frame.product == "washer"
        seqs.setdefault((msg.partition, frame.camera_id), []).append(frame.seq)
        expected = camera.render(frame.meta["synthetic_index"])
        assert frame.meta["gt_defective"] is expected.defective
        pixels = decode(frame.encoding, frame.image, limits, frame.dtype, frame.shape)
        if frame.encoding == "raw":
            assert np.array_equal(pixels, expected.image)
        else:
            assert np.abs(pixels.astype(int) - expected.image).mean() < 4  # jpeg at quality 92
    # Keyed by camera: each camera's frames sit in one partition, in send order.
    assert sorted(cam for _, cam in seqs) == ["cam-a", "cam-b"]
    for (_, camera_id), got in seqs.items():
        assert got == list(range(counts[camera_id]))


@pytest.mark.kafka
def test_delivery_failure_is_counted_never_reported_delivered(stack, settings: Settings, caplog) -> None:
    from lineguard.kafka import admin_client

    line = _unique_line("nowhere")  # no ensure_topics: the topic does not exist
    overrides = {"message.timeout.ms": 2000, "allow.auto.create.topics": False}
    producer = CameraProducer(settings, line, config_overrides=overrides)
    camera = SyntheticCamera("bolt", size=64, seed=0)
    with caplog.at_level(logging.ERROR, logger="lineguard.producers.camera"):
        producer.run(SyntheticSource(camera), count=5)
        stats = producer.close()
    assert (stats.sent, stats.delivered, stats.failed) == (5, 0, 5)
    assert "frame delivery failed" in caplog.text
    # The producer must not have created the topic behind our back.
    assert topics.frames(line) not in admin_client(settings.kafka).list_topics(timeout=10).topics


@pytest.mark.kafka
def test_oversized_frame_refused_then_producer_carries_on(stack, settings: Settings) -> None:
    from lineguard.kafka import count_messages, ensure_topics

    line = _unique_line("big")
    settings.kafka.message_max_bytes = 1024 * 1024
    ensure_topics(settings.kafka, [line])
    producer = CameraProducer(settings, line, encoding="raw")
    with pytest.raises(FrameTooLargeError):
        producer.send(np.zeros((1024, 1024, 3), dtype=np.uint8))
    producer.send(np.zeros((64, 64, 3), dtype=np.uint8))
    stats = producer.close()
    assert (stats.sent, stats.delivered, stats.failed) == (2, 1, 1)
    assert count_messages(settings.kafka, topics.frames(line)) == 1


@pytest.mark.kafka
def test_run_paces_to_the_target_rate_without_drift(stack, settings: Settings) -> None:
    from lineguard.kafka import ensure_topics

    line = _unique_line("pace")
    ensure_topics(settings.kafka, [line])
    producer = CameraProducer(settings, line)
    frames = SyntheticSource(SyntheticCamera("washer", size=64, seed=0))

    def stalling_source():  # noqa: ANN202
        for n, item in enumerate(frames):
            if n == 5:
                time.sleep(1.0)  # a hiccup: the schedule, not the hiccup, sets the end time
            yield item

    start = time.monotonic()
    producer.run(stalling_source(), fps=10, count=21)  # frame 20 is due at 2.0 s
    elapsed = time.monotonic() - start
    stats = producer.close()
    assert stats.delivered == 21
    # Too fast means no pacing; 3 s or more means the stall was added on (drift). The wide
    # upper margin keeps a loaded CI machine from failing a correct schedule.
    assert 1.95 < elapsed < 2.8, f"21 frames at 10 fps with a 1 s stall took {elapsed:.2f}s"


@pytest.mark.kafka
def test_cli_produce_prints_counts(stack, settings: Settings, tmp_path: Path, capsys) -> None:
    from lineguard.kafka import count_messages

    line = _unique_line("cli")
    args = _parse(["produce", "--line", line, "--camera", "c9", "--count", "12", "--size", "64",
                   "--defect-rate", "0.3", "--encoding", "png"])
    assert args.handler(args, settings) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"produce: line={line} sent=12 delivered=12 failed=0 skipped=0")
    assert count_messages(settings.kafka, topics.frames(line)) == 12

    folder = tmp_path / "images"
    for i in range(3):
        _write_png(folder / f"{i}.png", _solid((i * 60, 100, 100)))
    (folder / "3.png").write_bytes(b"corrupt")
    args = _parse(["produce", "--line", line, "--source", f"folder:{folder}"])
    assert args.handler(args, settings) == 0
    assert f"produce: line={line} sent=3 delivered=3 failed=0 skipped=1" in capsys.readouterr().out

    # A failure makes the exit status non-zero.
    settings.kafka.message_max_bytes = 1024 * 1024
    args = _parse(["produce", "--line", line, "--count", "2", "--size", "1024", "--encoding", "raw"])
    assert args.handler(args, settings) == 1
    assert f"produce: line={line} sent=2 delivered=0 failed=2 skipped=0" in capsys.readouterr().out
