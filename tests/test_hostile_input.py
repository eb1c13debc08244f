"""Poison and hostile input: the frame decoder under fuzzing, decompression bombs, wrong
dtypes and shapes, out-of-range integers; and, on the real stack, frames for an unknown line
or product, which must end in the dead-letter topic with a reason code while the processor
keeps running.

The fuzz test feeds more than 10,000 generated messages (random bytes, mutated valid
frames, valid maps with fields swapped for values of any msgpack type, images with hostile
headers) through ``Frame.decode`` and ``lineguard.schemas.image.decode`` (plus the sinks'
decoders), and requires that nothing but :class:`SchemaError` comes out and that the
process's resident memory does not grow beyond a small bound.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from lineguard.benchmarks.hostile import jpeg_declaring, png_declaring
from lineguard.harness import status_kib
from lineguard.schemas import DeadLetter, Frame, Heatmap, ImageLimits, Reason, SchemaError, Verdict, topics
from lineguard.schemas import image as imagecodec
from lineguard.schemas.messages import RAW_DTYPES

sys.path.insert(0, str(Path(__file__).parent))

LIMITS = ImageLimits(max_image_bytes=256 << 10, max_width=2048, max_height=2048, max_pixels=1_000_000)
MAX_MESSAGE_BYTES = 2 << 20
FUZZ_INPUTS = 11_000


def _rss_kib() -> int:
    """Resident memory of this process after collecting garbage and handing freed heap back to
    the OS (malloc_trim), so what remains is memory still in use, not the allocator's cache."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return status_kib("self", "VmRSS")


def _frame(**kw) -> Frame:  # noqa: ANN003
    base = dict(frame_id="0" * 32, line_id="line1", camera_id="cam1", product="washer",
                captured_at_ns=1_700_000_000_000_000_000, seq=1, encoding="jpeg", image=b"")
    base.update(kw)
    return Frame(**base)


def _seed_frames() -> list[Frame]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, (10, 8), dtype=np.uint8)
    frames = []
    for enc, img in (("jpeg", rgb), ("png", rgb), ("png", gray), ("raw", rgb), ("raw", gray)):
        data, dtype, shape = imagecodec.encode(img, enc)
        frames.append(_frame(encoding=enc, image=data, dtype=dtype, shape=shape))
    u16 = rng.integers(0, 65535, (4, 6), dtype=np.uint16)
    frames.append(_frame(encoding="raw", image=u16.tobytes(), dtype="uint16", shape=[4, 6]))
    f32 = rng.random((3, 5, 1), dtype=np.float32)
    frames.append(_frame(encoding="raw", image=f32.tobytes(), dtype="float32", shape=[3, 5, 1]))
    return frames


SEEDS = _seed_frames()
SEED_BYTES = [f.encode() for f in SEEDS]
SEED_DOCS = [f.to_dict() for f in SEEDS]
FIELDS = sorted(SEED_DOCS[0]) + ["unknown_extra"]

# Every msgpack type, with the edges: integers up to unsigned 64 bits, NaN/inf, containers.
MSGPACK_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=48),
    st.lists(st.integers(-(2**63), 2**64 - 1) | st.booleans() | st.floats(), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4)
                    | st.lists(st.none(), max_size=2), max_size=3),
)


def _mutate(data: bytearray, program: bytes) -> bytes:
    """Apply a byte-level damage program: each 4-byte step is (op, position hi, position lo, operand)."""
    for i in range(0, len(program) - 3, 4):
        if not data:
            break
        op, hi, lo, operand = program[i:i + 4]
        at = ((hi << 8) | lo) % len(data)
        kind = op % 5
        if kind == 0:                                   # flip bits
            data[at] ^= operand or 1
        elif kind == 1:                                 # truncate
            del data[at:]
        elif kind == 2:                                 # insert bytes
            data[at:at] = program[i:i + 1 + operand % 16]
        elif kind == 3:                                 # delete a run
            del data[at:at + 1 + operand % 16]
        else:                                           # splice in the tail of another frame
            other = SEED_BYTES[operand % len(SEED_BYTES)]
            data[at:] = other[(at * 7 + operand) % len(other):]
    return bytes(data)


@st.composite
def mutated_frames(draw) -> bytes:  # noqa: ANN001
    """A valid frame message with byte-level damage: flips, truncation, insertion, deletion, splices."""
    seed = draw(st.sampled_from(SEED_BYTES))
    return _mutate(bytearray(seed), draw(st.binary(min_size=4, max_size=24)))


@st.composite
def swapped_fields(draw) -> bytes:  # noqa: ANN001
    """A valid frame map with some fields removed or replaced by values of any msgpack type."""
    doc = dict(draw(st.sampled_from(SEED_DOCS)))
    name = draw(st.sampled_from(FIELDS))
    value = draw(MSGPACK_VALUES)
    if value is None and len(name) % 2:
        doc.pop(name, None)   # a missing field (for half the names; the others get an explicit nil)
    else:
        doc[name] = value
    if draw(st.booleans()):   # and sometimes a second field
        doc[draw(st.sampled_from(FIELDS))] = draw(MSGPACK_VALUES)
    return msgpack.packb(doc, use_bin_type=True)


@st.composite
def hostile_images(draw) -> bytes:  # noqa: ANN001
    """Well-formed frames whose image is hostile: bombs, damaged codecs, wrong dtypes and shapes."""
    kind = draw(st.sampled_from(["png_dims", "jpeg_dims", "raw", "damaged"]))
    if kind == "png_dims":
        w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        return _frame(encoding="png", image=png_declaring(w, h)).encode()
    if kind == "jpeg_dims":
        w, h = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        return _frame(encoding="jpeg", image=jpeg_declaring(w, h)).encode()
    if kind == "raw":
        doc = _frame(encoding="raw").to_dict()
        doc["dtype"] = draw(st.sampled_from([*RAW_DTYPES, "int8", "float64", "uint32", ">f4", "<u2", "object",
                                             "U10", "V8", "", "uint8\x00"]))
        doc["shape"] = draw(st.lists(st.integers(-3, 70_000) | st.booleans() | st.floats(-2, 9000),
                                     max_size=4))
        doc["image"] = draw(st.binary(max_size=600))
        return msgpack.packb(doc, use_bin_type=True)
    seed = draw(st.sampled_from([f for f in SEEDS if f.encoding != "raw"]))
    image = _mutate(bytearray(seed.image), draw(st.binary(min_size=4, max_size=16)))
    return _frame(encoding=seed.encoding, image=image).encode()


ANY_INPUT = st.one_of(st.binary(max_size=4096), mutated_frames(), swapped_fields(), hostile_images())


def _consume(data: bytes, outcomes: Counter) -> None:  # noqa: ANN001
    """What the processor does with a message before scoring, then what the sinks' decoders do."""
    try:
        frame = Frame.decode(data, max_bytes=MAX_MESSAGE_BYTES)
        topics.heatmap_key(frame.line_id, frame.frame_id, frame.captured_at_ns)
        array = imagecodec.decode(frame.encoding, frame.image, LIMITS, frame.dtype, frame.shape)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
        assert array.shape[0] * array.shape[1] <= LIMITS.max_pixels
        outcomes["decoded"] += 1
    except SchemaError as exc:
        assert exc.reason in {r.value for r in Reason}, exc.reason
        outcomes[exc.reason] += 1
    for cls in (Verdict, Heatmap, DeadLetter):
        try:
            cls.decode(data, max_bytes=MAX_MESSAGE_BYTES)
        except SchemaError:
            pass


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fuzz_frame_decoder_more_than_10000_inputs_only_schema_errors_bounded_memory() -> None:
    """Hypothesis generates the inputs (each goes through the decoders as it is generated), then
    the same inputs are replayed outside hypothesis to measure the decoders' memory alone: after
    the replay, resident memory must be where it was (no leak, nothing cached per input)."""
    warm_up: Counter[str] = Counter()
    for data in SEED_BYTES:  # warm up codecs and caches
        _consume(data, warm_up)
    assert warm_up == {"decoded": len(SEED_BYTES)}
    outcomes: Counter[str] = Counter()
    inputs: list[bytes] = []
    started = time.monotonic()

    @settings(max_examples=FUZZ_INPUTS, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(ANY_INPUT)
    def fuzz(data: bytes) -> None:
        inputs.append(data)
        _consume(data, outcomes)

    fuzz()
    generated_s = time.monotonic() - started
    replay: Counter[str] = Counter()
    for data in inputs[:500]:  # the replay's own warm-up
        _consume(data, replay)
    rss_before = _rss_kib()
    replay.clear()
    for data in inputs:
        _consume(data, replay)
    rss_after = _rss_kib()
    growth_mib = (rss_after - rss_before) / 1024
    print(f"fuzz: inputs={len(inputs)} decoded={outcomes['decoded']} rss_before_mib={rss_before // 1024} "
          f"rss_after_mib={rss_after // 1024} rss_growth_mib={growth_mib:.1f} generate_s={generated_s:.0f} "
          "reasons=" + ",".join(f"{k}:{v}" for k, v in sorted(outcomes.items()) if k != "decoded"))
    assert len(inputs) >= 10_000
    assert replay == outcomes  # decoding is deterministic: the replay met the same outcomes
    assert growth_mib < 16, f"RSS grew by {growth_mib:.1f} MiB over {len(inputs)} hostile inputs (a leak)"
    # The corpus reached every kind of rejection, and valid frames got through as well.
    for reason in ("malformed", "unsupported_version", "invalid_field", "image_too_large", "undecodable_image"):
        assert outcomes[reason] > 0, (reason, outcomes)
    assert outcomes["decoded"] > 0


def _reason_of(frame_bytes: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(SchemaError) as info:
        frame = Frame.decode(frame_bytes, max_bytes=MAX_MESSAGE_BYTES)
        imagecodec.decode(frame.encoding, frame.image, limits, frame.dtype, frame.shape)
    return info.value.reason


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (2**31 - 1, 1), (5000, 5000), (4097, 16)])
def test_png_declaring_a_huge_size_is_refused_before_any_pixel_is_decompressed(width: int, height: int) -> None:
    gc.collect()
    before = _rss_kib()
    started = time.monotonic()
    assert _reason_of(_frame(encoding="png", image=png_declaring(width, height)).encode()) == "image_too_large"
    assert (_rss_kib() - before) < 16 * 1024  # nothing the size of the declared image was allocated
    assert time.monotonic() - started < 5  # not a timing claim: a decompression would take minutes


@pytest.mark.parametrize("width,height", [(65_000, 65_000), (65_535, 1), (3000, 3000)])
def test_jpeg_declaring_a_huge_size_is_refused_from_its_header(width: int, height: int) -> None:
    gc.collect()
    before = _rss_kib()
    assert _reason_of(_frame(encoding="jpeg", image=jpeg_declaring(width, height)).encode()) == "image_too_large"
    assert (_rss_kib() - before) < 16 * 1024


def test_a_real_zlib_bomb_within_the_limits_is_decoded_without_blowing_up() -> None:
    """A PNG of 1000x1000 that compresses 3 MB of zeros into a few kB: legal (at the pixel
    limit), so it is decoded, and costs exactly its declared size; the same image under a
    stricter limit is refused from its header."""
    raw_rows = b"".join(b"\x00" + b"\x00" * (1000 * 3) for _ in range(1000))
    png = png_declaring(1000, 1000, body=raw_rows)
    assert len(png) < 10_000  # 3 MB of pixels in a few kB
    frame = Frame.decode(_frame(encoding="png", image=png).encode())
    assert imagecodec.decode("png", frame.image, LIMITS).shape == (1000, 1000, 3)
    strict = ImageLimits(max_image_bytes=1 << 20, max_width=4096, max_height=4096, max_pixels=500_000)
    assert _reason_of(_frame(encoding="png", image=png).encode(), strict) == "image_too_large"


@pytest.mark.parametrize("dtype,shape,nbytes,reason", [
    ("float64", [4, 4], 128, "invalid_field"),          # not a wire dtype
    ("int8", [4, 4], 16, "invalid_field"),
    ("object", [1, 1], 8, "invalid_field"),
    ("uint8", [4, 4, 4], 64, "invalid_field"),          # 4 channels
    ("uint8", [4], 4, "invalid_field"),                 # 1-D
    ("uint8", [4, 4, 3, 1], 48, "invalid_field"),       # 4-D
    ("uint8", [0, 4], 0, "invalid_field"),              # empty
    ("uint8", [-4, 4], 16, "invalid_field"),
    ("uint8", [True, 4], 4, "invalid_field"),           # bool is not a dimension
    ("uint8", [4.0, 4], 16, "invalid_field"),           # float is not a dimension
    ("uint8", None, 16, "invalid_field"),               # raw without a shape
    ("uint8", [4, 4], 15, "undecodable_image"),         # bytes do not match the shape
    ("uint16", [4, 4], 16, "undecodable_image"),        # ... or the dtype
    ("uint8", [5000, 4], 20_000, "image_too_large"),    # taller than the limit
    ("uint8", [2**40, 2**40], 16, "image_too_large"),   # a product that would overflow
    ("float32", [2, 2], 16, None),                      # NaN payload: see below
])
def test_raw_frames_with_wrong_dtypes_and_shapes(dtype, shape, nbytes, reason) -> None:  # noqa: ANN001
    doc = _frame(encoding="raw").to_dict()
    doc.update(dtype=dtype, shape=shape, image=b"\x00" * nbytes if reason else np.full(4, np.nan, np.float32).tobytes())
    assert _reason_of(msgpack.packb(doc, use_bin_type=True)) == (reason or "undecodable_image")


@pytest.mark.parametrize("cls,field", [(Frame, "captured_at_ns"), (Frame, "seq"), (Verdict, "captured_at_ns"),
                                        (Verdict, "seq"), (Verdict, "scored_at_ns"), (DeadLetter, "offset")])
def test_integers_beyond_signed_64_bits_are_refused(cls, field) -> None:  # noqa: ANN001
    """msgpack carries unsigned 64-bit integers; ClickHouse's Int64 columns cannot hold them and a
    server-backed sink would retry such a verdict forever. The decoders refuse them instead."""
    docs = {
        Frame: SEED_DOCS[0],
        Verdict: dict(frame_id="f", line_id="l", camera_id="c", product="p", seq=1, captured_at_ns=1, scored_at_ns=2,
                      model_name="m", model_version="v", score=0.5, threshold=0.4, is_defective=True, heatmap_key=None,
                      queue_wait_ms=1.0, inference_ms=1.0, processor_id="p", schema_version=1),
        DeadLetter: DeadLetter.build(source_topic="t", partition=0, offset=1, reason="malformed", error="e", raw=b"",
                                     max_raw_bytes=10, failed_at_ns=1, component="c").to_dict(),
    }
    doc = dict(docs[cls])
    cls.decode(msgpack.packb(doc, use_bin_type=True))  # the base document is valid
    for value in (2**63, 2**64 - 1):
        doc[field] = value
        with pytest.raises(SchemaError) as info:
            cls.decode(msgpack.packb(doc, use_bin_type=True))
        assert info.value.reason == "invalid_field"
    doc[field] = 2**63 - 1
    cls.decode(msgpack.packb(doc, use_bin_type=True))  # the largest signed 64-bit value is fine
