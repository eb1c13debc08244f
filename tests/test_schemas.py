"""Wire contracts: round trips, strict decoding with reason codes, forward compatibility, bomb guards."""

from __future__ import annotations

import io
import json
import struct
import zlib

import msgpack
import numpy as np
import pytest

from lineguard.schemas import DeadLetter, Frame, Heatmap, ImageLimits, SchemaError, Verdict, topics
from lineguard.schemas import image as imagecodec
from lineguard.schemas.jsonschema import VERDICT_SCHEMA_FILE, schema_for


def _frame(**kw) -> Frame:
    base = dict(frame_id="f1", line_id="line1", camera_id="cam1", product="washer", captured_at_ns=1_700_000_000_000_000_000,
                seq=7, encoding="jpeg", image=b"\xff\xd8", meta={"shift": "A", "gt_defective": False})
    base.update(kw)
    return Frame(**base)


def _verdict(**kw) -> Verdict:
    base = dict(frame_id="f1", line_id="line1", camera_id="cam1", product="washer", seq=7, captured_at_ns=1,
                scored_at_ns=2, model_name="washer", model_version="v1", score=0.7, threshold=0.5,
                is_defective=True, heatmap_key="line1/2023/11/14/f1.png", queue_wait_ms=1.5, inference_ms=9.0,
                processor_id="p1")
    base.update(kw)
    return Verdict(**base)


def _reason(data: bytes, cls=Frame, **kw) -> str:
    with pytest.raises(SchemaError) as info:
        cls.decode(data, **kw)
    return info.value.reason


def test_round_trips():
    for msg in (_frame(), _verdict(), Heatmap(frame_id="f", line_id="l", key="k", content_type="image/png", data=b"x", captured_at_ns=3),
                DeadLetter.build(source_topic="t", partition=0, offset=5, reason="malformed", error="e", raw=b"abc" * 10,
                                 max_raw_bytes=4, failed_at_ns=9, component="processor")):
        again = type(msg).decode(msg.encode())
        assert again == msg
    letter = DeadLetter.decode(DeadLetter.build(source_topic="t", partition=0, offset=5, reason="x", error="e", raw=b"abcdef",
                                                max_raw_bytes=4, failed_at_ns=9, component="c").encode())
    assert letter.raw == b"abcd" and letter.raw_size == 6


def test_strict_decoding_reasons():
    good = _frame().to_dict()
    assert _reason(b"\x93\x01") == "malformed"                          # truncated array
    assert _reason(_frame().encode()[:-5]) == "malformed"               # truncated map
    assert _reason(msgpack.packb([1, 2])) == "malformed"                # not a map
    assert _reason(msgpack.packb({**good, "schema_version": 2})) == "unsupported_version"
    missing = dict(good)
    del missing["camera_id"]
    assert _reason(msgpack.packb(missing)) == "invalid_field"
    assert _reason(msgpack.packb({**good, "seq": "7"})) == "invalid_field"
    assert _reason(msgpack.packb({**good, "seq": True})) == "invalid_field"  # bool is not an int here
    assert _reason(msgpack.packb({**good, "encoding": "gif"})) == "invalid_field"
    assert _reason(msgpack.packb({**good, "encoding": "raw", "dtype": "int64", "shape": [2, 2]})) == "invalid_field"
    assert _reason(msgpack.packb({**good, "encoding": "raw", "dtype": "uint8", "shape": [2, -2]})) == "invalid_field"
    assert _reason(msgpack.packb({**good, "meta": {"k": [1, 2]}})) == "invalid_field"
    assert _reason(_frame(image=b"x" * 5000).encode(), max_bytes=1000) == "oversize"
    assert _reason(msgpack.packb({**_verdict().to_dict(), "is_defective": 1}), cls=Verdict) == "invalid_field"


def test_unknown_fields_are_ignored():
    doc = {**_verdict().to_dict(), "added_in_v1_1": {"anything": 1}}
    assert Verdict.decode(msgpack.packb(doc)) == _verdict()


def test_topics_and_heatmap_key():
    assert topics.frames("line1") == "lineguard.frames.line1"
    assert topics.verdicts("L-2") == "lineguard.verdicts.L-2"
    assert topics.line_of("lineguard.heatmaps.L-2") == "L-2"
    with pytest.raises(ValueError):
        topics.frames("bad line/..")
    assert topics.heatmap_key("line1", "abc", 1_700_000_000_000_000_000) == "line1/2023/11/14/abc.png"


def test_topic_patterns_match_their_own_kind_only():
    import re

    verdicts = re.compile(topics.pattern("verdicts"))
    assert verdicts.match(topics.verdicts("press-1"))
    assert not verdicts.match(topics.heatmaps("press-1")) and not verdicts.match("lineguardXverdicts.x")
    assert re.match(topics.pattern("heatmaps"), topics.per_line("heatmaps", "L2"))
    with pytest.raises(ValueError, match="unknown topic kind"):
        topics.per_line("scores", "L2")


def test_image_codecs_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for enc in ("png", "raw"):
        data, dtype, shape = imagecodec.encode(img, enc)
        assert np.array_equal(imagecodec.decode(enc, data, ImageLimits(), dtype, shape), img)
    smooth = np.dstack([np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1))] * 3)
    data, _, _ = imagecodec.encode(smooth, "jpeg", quality=95)
    assert np.abs(imagecodec.decode("jpeg", data, ImageLimits()).astype(int) - smooth).mean() < 3
    gray = rng.integers(0, 255, (10, 12), dtype=np.uint8)
    out = imagecodec.decode("raw", gray.tobytes(), ImageLimits(), "uint8", [10, 12])
    assert out.shape == (10, 12, 3)
    f32 = np.full((4, 4), 0.5, np.float32)
    assert imagecodec.decode("raw", f32.tobytes(), ImageLimits(), "float32", [4, 4])[0, 0, 0] == 128


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries a tiny compressed body (a 'bomb')."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def test_image_limits_and_bombs():
    limits = ImageLimits(max_image_bytes=10_000, max_width=1000, max_height=1000, max_pixels=500_000)
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("png", _png_header_only(100_000, 100_000), limits)
    assert info.value.reason == "image_too_large"
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("raw", b"\x00" * 100, limits, "uint8", [2000, 10])
    assert info.value.reason == "image_too_large"
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("raw", b"\x00" * 99, limits, "uint8", [10, 10])
    assert info.value.reason == "undecodable_image"
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("jpeg", b"\xff\xd8\xff\xe0garbage", limits)
    assert info.value.reason == "undecodable_image"
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("png", b"x" * 20_000, limits)
    assert info.value.reason == "oversize"
    png, _, _ = imagecodec.encode(np.zeros((8, 8, 3), np.uint8), "png")
    with pytest.raises(SchemaError) as info:
        imagecodec.decode("jpeg", png, limits)  # payload does not match the declared encoding
    assert info.value.reason == "undecodable_image"


def test_verdict_json_schema_is_current_and_validates():
    jsonschema = pytest.importorskip("jsonschema")
    committed = json.loads(VERDICT_SCHEMA_FILE.read_text())
    assert committed == schema_for(Verdict), "regenerate: python -m lineguard.schemas.jsonschema"
    doc = msgpack.unpackb(_verdict().encode(), raw=False)
    jsonschema.validate(doc, committed)
    jsonschema.validate({**doc, "heatmap_key": None}, committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "score": "high"}, committed)
