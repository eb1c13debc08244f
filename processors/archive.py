"""The frame archive: which scored frames are kept as images in the object store, and the message that carries one.

The processor never writes to the object store: an archived frame travels as a
:class:`~lineguard.schemas.Heatmap` message (an object key, a content type, bytes) on the line's
heatmap topic, and the heatmap sink stores it, as it stores overlays. Keys come from
:func:`~lineguard.schemas.topics.archive_key`, so a replayed or re-scored frame overwrites its own object.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lineguard.config import ProcessorConfig
from lineguard.schemas import Frame, Heatmap, image, topics

# JPEG and PNG frames are archived as the camera sent them; raw arrays become PNG (when 8-bit).
_EXTENSIONS = {"jpeg": ("jpg", "image/jpeg"), "png": ("png", "image/png")}


def in_sample(frame_id: str, rate: float) -> bool:
    """Whether ``frame_id`` falls in a ``rate`` sample: by hash, so a replay decides as the first pass did."""
    digest = int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:8], "big")
    return digest < rate * 2**64


def wants_archive(config: ProcessorConfig, frame_id: str, defective: bool) -> bool:
    mode = config.archive
    return (mode == "all" or (mode == "defective" and defective)
            or (mode == "sample" and (defective or in_sample(frame_id, config.archive_sample_rate))))


def archive_message(frame: Frame, decoded: np.ndarray) -> Heatmap | None:
    """The frame's image as an object for the heatmap sink; None for a raw frame PNG cannot hold."""
    if frame.encoding in _EXTENSIONS:
        ext, content_type = _EXTENSIONS[frame.encoding]
        data = frame.image
    elif decoded.dtype == np.uint8:
        try:
            data, _, _ = image.encode(decoded, "png")
        except (ValueError, OSError):  # a shape PIL cannot write: the frame is scored, not archived
            return None
        ext, content_type = "png", "image/png"
    else:
        return None  # 16-bit or float raw frames: not archived (see docs/replay.md)
    key = topics.archive_key(frame.line_id, frame.frame_id, frame.captured_at_ns, ext)
    return Heatmap(frame_id=frame.frame_id, line_id=frame.line_id, key=key, content_type=content_type,
                   data=data, captured_at_ns=frame.captured_at_ns)
