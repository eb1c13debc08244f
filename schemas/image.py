"""Image payloads of frames: encode for the wire, decode with bomb-proof limits.

Decoding checks the declared dimensions from the header *before* any pixel
is decompressed, so a 100,000 x 100,000 PNG of a few kilobytes is rejected
without allocating anything.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import Reason, SchemaError

# Our own limits are checked first; PIL's guard stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = 200_000_000


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int = 12 * 1024 * 1024
    max_width: int = 8192
    max_height: int = 8192
    max_pixels: int = 40_000_000

    @classmethod
    def from_config(cls, limits) -> "ImageLimits":  # noqa: ANN001 - lineguard.config.LimitsConfig
        return cls(limits.max_image_bytes, limits.max_width, limits.max_height, limits.max_pixels)


def _check_dims(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise SchemaError(Reason.UNDECODABLE_IMAGE, f"image has empty dimensions {width}x{height}")
    if width > limits.max_width or height > limits.max_height or width * height > limits.max_pixels:
        raise SchemaError(
            Reason.IMAGE_TOO_LARGE,
            f"image {width}x{height} exceeds the limit ({limits.max_width}x{limits.max_height}, "
            f"{limits.max_pixels} pixels)",
        )


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def decode(encoding: str, data: bytes, limits: ImageLimits, dtype: str | None = None,
           shape: list[int] | None = None) -> np.ndarray:
    """Decode a frame's image to an ``H x W x 3`` uint8 RGB array."""
    if len(data) > limits.max_image_bytes:
        raise SchemaError(Reason.OVERSIZE, f"image of {len(data)} bytes exceeds {limits.max_image_bytes}")
    if encoding == "raw":
        if not shape or dtype is None:
            raise SchemaError(Reason.INVALID_FIELD, "raw image needs dtype and shape")
        height, width = shape[0], shape[1]
        _check_dims(width, height, limits)
        np_dtype = np.dtype(dtype)
        expected = int(np.prod(shape)) * np_dtype.itemsize
        if len(data) != expected:
            raise SchemaError(
                Reason.UNDECODABLE_IMAGE,
                f"raw image of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}",
            )
        array = np.frombuffer(data, dtype=np_dtype).reshape(shape)
        if np_dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
        elif np_dtype == np.float32:
            if not np.isfinite(array).all():
                raise SchemaError(Reason.UNDECODABLE_IMAGE, "raw float32 image holds NaN or infinity")
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return _to_rgb(array)
    if encoding not in ("jpeg", "png"):
        raise SchemaError(Reason.INVALID_FIELD, f"unknown image encoding {encoding!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            _check_dims(img.width, img.height, limits)
            expected_format = "JPEG" if encoding == "jpeg" else "PNG"
            if img.format != expected_format:
                raise SchemaError(Reason.UNDECODABLE_IMAGE, f"payload is {img.format}, frame says {encoding}")
            img.load()
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            return _to_rgb(np.asarray(img, dtype=np.uint8))
    except SchemaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SchemaError(Reason.IMAGE_TOO_LARGE, f"decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise SchemaError(Reason.UNDECODABLE_IMAGE, f"cannot decode {encoding} image: {type(exc).__name__}: {exc}") from None


def encode(array: np.ndarray, encoding: str = "jpeg", quality: int = 92) -> tuple[bytes, str | None, list[int] | None]:
    """Encode an ``H x W`` or ``H x W x 3`` uint8 array; returns (bytes, dtype, shape)."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode expects uint8, got {array.dtype}")
    if encoding == "raw":
        return array.tobytes(), "uint8", list(array.shape)
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif encoding == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return buf.getvalue(), None, None


def read_file(path) -> np.ndarray:  # noqa: ANN001
    """Read an image file from disk as RGB uint8 (raises OSError/ValueError if unreadable)."""
    with Image.open(path) as img:
        img.load()
        return _to_rgb(np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L") else img, dtype=np.uint8))
