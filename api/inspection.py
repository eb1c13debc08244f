"""One synchronous inspection: upload bytes -> decoded image -> ScoringEngine -> verdict (+ heatmap).

Decoding goes through ``lineguard.schemas.image.decode`` with the API's limits, the
same bomb-proof path the processors use: the declared dimensions are checked from
the header before a pixel is decompressed.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import cv2
import numpy as np

from lineguard.config import Settings
from lineguard.processors.heatmap import render_overlay
from lineguard.processors.scoring import threshold_for
from lineguard.schemas import ImageLimits, Reason, SchemaError, image

from .models import LoadedModel

HEATMAP_MAX_SIDE = 512  # as the processors: overlays are for people


class InspectionError(Exception):
    """A request the API refuses, with the HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def sniff(data: bytes) -> str:
    """The upload's image format from its magic bytes (the client's content type is not trusted)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise InspectionError(415, "unsupported_media_type", "upload a JPEG or PNG image")


def limits_for(settings: Settings) -> ImageLimits:
    return ImageLimits(max_image_bytes=settings.api.max_upload_bytes, max_width=settings.limits.max_width,
                       max_height=settings.limits.max_height, max_pixels=settings.api.max_pixels)


def decode_upload(data: bytes, limits: ImageLimits) -> np.ndarray:
    if not data:
        raise InspectionError(422, "invalid_image", "the uploaded file is empty")
    if len(data) > limits.max_image_bytes:
        raise InspectionError(413, "payload_too_large",
                              f"image of {len(data)} bytes exceeds the {limits.max_image_bytes}-byte limit")
    encoding = sniff(data)
    try:
        return image.decode(encoding, data, limits)
    except SchemaError as exc:
        if exc.reason in (Reason.OVERSIZE, Reason.IMAGE_TOO_LARGE):
            raise InspectionError(413, "image_too_large", str(exc)) from None
        raise InspectionError(422, "invalid_image", str(exc)) from None


@dataclass
class Inspection:
    score: float
    threshold: float
    is_defective: bool
    inference_ms: float
    width: int
    height: int
    heatmap_png: bytes | None


def _for_display(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    scale = HEATMAP_MAX_SIDE / max(h, w)
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def inspect(model: LoadedModel, img: np.ndarray, settings: Settings, line_id: str | None,
            want_heatmap: bool) -> Inspection:
    engine = model.engine
    started = time.perf_counter()
    scores, maps = engine.score([img])
    inference_ms = (time.perf_counter() - started) * 1000
    score = float(scores[0])
    if not np.isfinite(score):
        raise InspectionError(422, "scoring_failed", "the engine returned a non-finite score for this image")
    manifest = engine.manifest
    # The same threshold a processor would apply on this line (overrides included).
    threshold = (threshold_for(settings.processor, line_id, model.product, manifest.thresholds.value)
                 if line_id else float(manifest.thresholds.value))
    heatmap = None
    if want_heatmap:
        heatmap = render_overlay(_for_display(img), maps[0][0], manifest.map_display_range, threshold)
    return Inspection(score, threshold, score > threshold, inference_ms, img.shape[1], img.shape[0], heatmap)


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None
