"""One synchronous inspection: upload bytes -> decoded image -> ScoringEngine -> verdict (+ heatmap).

Decoding goes through ``lineguard.schemas.image.decode`` with the API's limits, the
same bomb-proof path the processors use: the declared dimensions are checked from
the header before a pixel is decompressed. Thresholds and overlays are
``lineguard.inspection``'s, so a verdict here is the one a processor would give.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np

from lineguard.config import Settings
from lineguard.engines.regions import RegionError, Regions, score_frames
from lineguard.inspection import LoadedModel, NonFiniteScore, is_defective, render_overlay, threshold_for
from lineguard.schemas import ImageLimits, Reason, SchemaError, image


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


def inspect(model: LoadedModel, img: np.ndarray, settings: Settings, line_id: str | None,
            want_heatmap: bool) -> Inspection:
    engine = model.engine
    manifest = engine.manifest
    # A model trained on a camera's ROI or tiles scores the upload cut the same way (the processors refuse a
    # camera cut otherwise, so this is the camera's cut too): one score and one stitched map for the image.
    regions = Regions.from_manifest(manifest.regions, engine.model_dir)
    size = (manifest.input.height, manifest.input.width)
    started = time.perf_counter()
    try:
        scores, maps = score_frames(engine.score, [img], regions, size, engine.max_batch)
    except RegionError as exc:
        raise InspectionError(422, "invalid_image", f"the image does not fit the model's regions: {exc}") from None
    inference_ms = (time.perf_counter() - started) * 1000
    score = float(scores[0])
    # The same threshold a processor would apply on this line (overrides included).
    threshold = threshold_for(settings.processor, line_id, model.product, manifest.thresholds.value)
    try:
        defective = is_defective(score, threshold)
    except NonFiniteScore:
        raise InspectionError(422, "scoring_failed", "the engine returned a non-finite score for this image") from None
    heatmap = render_overlay(img, maps[0][0], manifest.map_display_range, threshold) if want_heatmap else None
    return Inspection(score, threshold, defective, inference_ms, img.shape[1], img.shape[0], heatmap)


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None
