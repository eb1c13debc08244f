"""The frame archive's choices (processor.archive): which frames, under which key, as what bytes; and replay's
classification of dead letters. No Kafka, no store: the real-stack path is tests/test_replay.py."""

from __future__ import annotations

import time

import numpy as np

from lineguard.config import ProcessorConfig
from lineguard.processors.archive import archive_message, in_sample, wants_archive
from lineguard.processors.replay import ReplayFilter, _classify, marker_key
from lineguard.schemas import DeadLetter, Frame, image, new_frame_id, topics


def _frame(**kw) -> Frame:
    base = dict(frame_id=new_frame_id(), line_id="line1", camera_id="cam", product="washer",
                captured_at_ns=1_717_000_000 * 10**9, seq=0, encoding="jpeg", image=b"jpeg-bytes")
    return Frame(**{**base, **kw})


def test_archive_modes_and_a_stable_sample():
    ids = [new_frame_id() for _ in range(4000)]
    sampled = [i for i in ids if in_sample(i, 0.1)]
    assert 300 < len(sampled) < 500 and sampled == [i for i in ids if in_sample(i, 0.1)]
    config = ProcessorConfig(archive="sample", archive_sample_rate=0.0)
    assert wants_archive(config, ids[0], defective=True) and not wants_archive(config, ids[0], defective=False)
    assert not wants_archive(ProcessorConfig(), ids[0], defective=True)  # off by default
    assert wants_archive(ProcessorConfig(archive="all"), ids[0], defective=False)
    assert not wants_archive(ProcessorConfig(archive="defective"), ids[0], defective=False)


def test_archive_message_keeps_the_camera_bytes_and_keys_under_the_line():
    frame = _frame()
    message = archive_message(frame, np.zeros((4, 4, 3), np.uint8))
    assert message.data == b"jpeg-bytes" and message.content_type == "image/jpeg"
    assert message.key == f"line1/archive/2024/05/29/{frame.frame_id}.jpg"
    assert message.key == topics.archive_key("line1", frame.frame_id, frame.captured_at_ns, "jpg")
    pixels = np.full((8, 8), 7, np.uint8)
    raw = _frame(encoding="raw", dtype="uint8", shape=[8, 8], image=pixels.tobytes())
    as_png = archive_message(raw, pixels)
    assert as_png.key.endswith(".png") and (image.decode("png", as_png.data, image.ImageLimits()) == 7).all()
    assert archive_message(raw, pixels.astype(np.float32)) is None  # not archived: PNG cannot hold it


def _letter(frame: Frame, reason: str = "unknown_product", max_raw: int = 10**6) -> DeadLetter:
    return DeadLetter.build(source_topic=topics.frames(frame.line_id), partition=1, offset=42, reason=reason,
                            error="x", raw=frame.encode(), max_raw_bytes=max_raw, failed_at_ns=time.time_ns(),
                            component="processor", frame_id=frame.frame_id, line_id=frame.line_id)


def test_replay_classifies_each_dead_letter():
    frame = _frame()
    letter = _letter(frame)
    assert marker_key(letter) == "lineguard.frames.line1/1/42"
    assert _classify(letter, ReplayFilter(), set()) == frame
    assert _classify(letter, ReplayFilter(), {marker_key(letter)}) == "already_replayed"
    assert _classify(_letter(frame, "malformed"), ReplayFilter(), set()) == "skipped_reason"
    assert _classify(letter, ReplayFilter(line="line2"), set()) == "skipped_filter"
    assert _classify(letter, ReplayFilter(since_ns=time.time_ns() + 10**9), set()) == "skipped_filter"
    assert _classify(_letter(frame, max_raw=20), ReplayFilter(), set()) == "skipped_truncated"
