"""Hostile frame messages, one per dead-letter reason, for the poison benchmark and the tests.

Each is what a broken or malicious camera could put on a line's frame topic: a decompression bomb
(an image header declaring far more pixels than the limits allow), an image that does not decode,
a field out of range, a frame naming another line or an unknown product, random bytes.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import msgpack
import numpy as np
from PIL import Image

from lineguard.schemas import Frame, new_frame_id


def png_declaring(width: int, height: int, body: bytes = b"\x00" * 1024) -> bytes:
    """A PNG whose header declares width x height; the compressed body is tiny."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body, 9)) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 header patched to declare width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)  # marker, length(2), precision(1), then H, W
    return bytes(data)


def poison_frames(line: str, other_line: str, product: str, camera: str, good_jpeg: bytes,
                  seed: int = 1) -> list[tuple[str, bytes]]:
    """(expected dead-letter reason, message value) for a frame topic of ``line``.

    ``other_line`` is a real line: its frame arriving on ``line``'s topic is misrouted."""
    def frame(**kw) -> Frame:  # noqa: ANN003
        base = dict(frame_id=new_frame_id(), line_id=line, camera_id=camera, product=product,
                    captured_at_ns=time.time_ns(), seq=0, encoding="jpeg", image=good_jpeg)
        base.update(kw)
        return Frame(**base)

    huge_ts = frame().to_dict()
    huge_ts["captured_at_ns"] = 2**64 - 1
    bad_dtype = frame(encoding="raw").to_dict()
    bad_dtype.update(dtype="float64", shape=[4, 4], image=bytes(128))
    return [
        ("unknown_line", frame(line_id="no-such-line").encode()),
        ("unknown_line", frame(line_id=other_line).encode()),
        ("unknown_product", frame(product="no-such-part").encode()),
        ("image_too_large", frame(encoding="png", image=png_declaring(100_000, 100_000)).encode()),
        ("image_too_large", frame(encoding="jpeg", image=jpeg_declaring(65_000, 65_000)).encode()),
        ("invalid_field", msgpack.packb(huge_ts, use_bin_type=True)),
        ("invalid_field", msgpack.packb(bad_dtype, use_bin_type=True)),
        ("undecodable_image", frame(encoding="raw", dtype="uint8", shape=[8, 8], image=bytes(7)).encode()),
        ("malformed", np.random.default_rng(seed).bytes(300)),
    ]
