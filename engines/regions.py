"""Regions and tiles: what part of a camera frame a model inspects, and at what scale.

Line cameras give 2-12 MP frames; resizing one to a model's 256 px input shrinks a 20 px defect to
2 px, below what a patch model resolves. A camera's :class:`Regions` (``plant.lines.<line>.cameras``)
instead:

1. crops the frame to its region of interest (``roi``, x/y/width/height in frame pixels);
2. cuts the ROI into square tiles of ``tile_size`` frame pixels overlapping by ``tile_overlap``:
   tiles start every ``tile_size - tile_overlap`` pixels and the last tile of a row or column is
   shifted inward so that every tile is full-size (its overlap with its neighbour grows);
3. resizes each tile (or, without tiling, the ROI) to the model's input: these are the model inputs;
4. stitches the tiles' anomaly maps back into one map in frame coordinates, at ``map_scale`` model
   pixels per frame pixel (about the model's own resolution, so a 12 MP frame's map stays small).
   Overlapping tiles are averaged (a uniform weight: exact on a constant map, and no tile's border
   counts more than another's). Outside the ROI and inside the ignore mask the map is 0.
5. The frame's score is the maximum of the stitched map over inspected pixels. Not the engines' own
   image score: that one (PatchCore's re-weighted nearest-neighbour distance) is per tile and cannot
   leave out the ignored pixels inside a tile, while the map can. Thresholds are calibrated on this
   same per-frame score (``engines/training.py``), so they mean the same thing in training and on the line.

Training (``lineguard train --roi/--tile/--ignore-mask``), scoring (processors) and evaluation all call
:func:`score_frames`, and the model's manifest records the regions it was trained with
(:meth:`Regions.to_manifest`), so scoring can refuse a camera whose geometry differs
(:func:`mismatch`). No Kafka and no configuration classes here: :meth:`Regions.from_camera` reads any
object with ``roi``, ``ignore_mask`` and ``tiling`` attributes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

IGNORE_MASK_FILE = "ignore_mask.png"  # written into the model folder by `lineguard train --ignore-mask`

Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels


class RegionError(ValueError):
    """A frame that does not fit its camera's regions (ROI outside the frame, mask of another size)."""


def load_ignore_mask(path: str | Path) -> np.ndarray:
    """A mask image as booleans: True where a pixel is *not* inspected (any non-zero value)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise RegionError(f"cannot read ignore mask {path}")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask > 0


def mask_digest(ignored: np.ndarray) -> str:
    """The sha256 of a mask's shape and pixels: compared between a model and a camera."""
    ignored = np.ascontiguousarray(ignored, dtype=bool)
    digest = hashlib.sha256(f"{ignored.shape[0]}x{ignored.shape[1]}:".encode())
    digest.update(np.packbits(ignored).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Regions:
    """Where a camera's frames are inspected. All None: the whole frame resized (the default)."""

    roi: Box | None = None
    tile_size: int | None = None
    tile_overlap: int = 0
    ignored: np.ndarray | None = field(default=None, repr=False)  # bool, ROI- or frame-sized; True = not inspected

    def __post_init__(self) -> None:
        if self.roi is not None:
            x, y, w, h = (int(v) for v in self.roi)
            if x < 0 or y < 0 or w < 1 or h < 1:
                raise RegionError(f"roi {self.roi}: x and y must be >= 0, width and height >= 1")
            object.__setattr__(self, "roi", (x, y, w, h))
        if self.tile_size is not None and not 0 <= self.tile_overlap < self.tile_size:
            raise RegionError(f"tile overlap {self.tile_overlap} must be in [0, tile size {self.tile_size})")

    @classmethod
    def from_camera(cls, camera: Any, base_dir: str | Path | None = None) -> "Regions":
        """From a ``CameraConfig`` (``roi``, ``ignore_mask`` path, ``tiling`` with ``size``/``overlap``) or None;
        a relative mask path is resolved against ``base_dir`` (default: the working directory)."""
        if camera is None:
            return cls()
        ignored = None
        if camera.ignore_mask is not None:
            path = Path(camera.ignore_mask)
            ignored = load_ignore_mask(path if path.is_absolute() or base_dir is None else Path(base_dir) / path)
        tiling = camera.tiling
        return cls(roi=tuple(camera.roi) if camera.roi is not None else None,
                   tile_size=tiling.size if tiling is not None else None,
                   tile_overlap=tiling.overlap if tiling is not None else 0, ignored=ignored)

    @classmethod
    def from_manifest(cls, doc: dict[str, Any] | None, model_dir: str | Path | None = None) -> "Regions":
        """What :meth:`to_manifest` recorded; the mask from the model folder's ``ignore_mask.png``."""
        if not doc:
            return cls()
        ignored = None
        if doc.get("ignore_mask_sha256") and model_dir is not None and (Path(model_dir) / IGNORE_MASK_FILE).exists():
            ignored = load_ignore_mask(Path(model_dir) / IGNORE_MASK_FILE)
        tiling = doc.get("tiling") or {}
        return cls(roi=tuple(doc["roi"]) if doc.get("roi") else None, tile_size=tiling.get("size"),
                   tile_overlap=tiling.get("overlap", 0), ignored=ignored)

    @property
    def is_whole_frame(self) -> bool:
        """No ROI, no tiles, no mask: the engine's own score and map are used unchanged."""
        return self.roi is None and self.tile_size is None and self.ignored is None

    def geometry(self) -> dict[str, Any]:
        """What decides the model's inputs: a model only scores inputs cut the way it was trained on."""
        return {"roi": list(self.roi) if self.roi else None,
                "tiling": {"size": self.tile_size, "overlap": self.tile_overlap} if self.tile_size else None}

    def to_manifest(self) -> dict[str, Any]:
        return {**self.geometry(), "ignore_mask_sha256": mask_digest(self.ignored) if self.ignored is not None else None}

    def describe(self) -> str:
        parts = [f"roi {self.roi}" if self.roi else "whole frame"]
        parts.append(f"tiles {self.tile_size} overlap {self.tile_overlap}" if self.tile_size else "resized")
        if self.ignored is not None:
            parts.append("ignore mask")
        return ", ".join(parts)


def mismatch(trained: dict[str, Any] | None, camera: Regions) -> tuple[str | None, str | None]:
    """``(refusal, warning)`` comparing a manifest's ``regions`` with a camera's.

    A different ROI or tiling is a refusal: the model never saw inputs cut that way and its threshold
    would mean nothing. A different ignore mask is a warning: the inputs are the same, only the pixels
    that count for the score differ (the threshold was calibrated with the model's mask).
    """
    model = Regions.from_manifest(trained)
    if model.geometry() != camera.geometry():
        return (f"the camera's regions ({camera.describe()}) differ from the model's training "
                f"({model.describe()}): retrain with the camera's --roi/--tile, or fix plant.lines"), None
    trained_mask = (trained or {}).get("ignore_mask_sha256")
    camera_mask = mask_digest(camera.ignored) if camera.ignored is not None else None
    if trained_mask != camera_mask:
        return None, ("the camera's ignore mask differs from the one the model was calibrated with: "
                      "its threshold may not fit")
    return None, None


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared pixels.

    Tiles step by ``tile - overlap``; the last one is shifted inward to end exactly at ``length`` (so it
    overlaps its neighbour more). A side shorter than a tile gets one tile, cut to the side.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = -(-(length - tile) // stride) + 1  # ceil division: enough steps to reach the end
    return [min(i * stride, length - tile) for i in range(n)]


@dataclass(frozen=True)
class FramePlan:
    """The geometry of one frame: its size, ROI, tile boxes (frame coordinates) and inspected pixels."""

    frame_size: tuple[int, int]  # height, width
    roi: Box
    tiles: list[Box]
    inspected: np.ndarray | None  # bool, ROI-sized; None: every ROI pixel is inspected
    map_scale: float  # stitched-map pixels per frame pixel

    @property
    def map_size(self) -> tuple[int, int]:
        h, w = self.frame_size
        return max(1, round(h * self.map_scale)), max(1, round(w * self.map_scale))

    def to_map(self, value: int) -> int:
        return round(value * self.map_scale)


def plan_frame(regions: Regions, frame_size: tuple[int, int], model_size: tuple[int, int],
               map_scale: float | None = None) -> FramePlan:
    """Where the model inputs of a ``frame_size`` (height, width) frame are, for a model of ``model_size``.

    ``map_scale`` defaults to about the model's resolution: the model pixels per frame pixel of a tile
    (or of the ROI), at most 1.
    """
    fh, fw = frame_size
    x, y, w, h = regions.roi if regions.roi is not None else (0, 0, fw, fh)
    if x + w > fw or y + h > fh:
        raise RegionError(f"roi {(x, y, w, h)} reaches outside the {fw} x {fh} frame")
    if regions.tile_size:
        th, tw = min(regions.tile_size, h), min(regions.tile_size, w)
        tiles = [(x + tx, y + ty, tw, th)
                 for ty in tile_starts(h, regions.tile_size, regions.tile_overlap)
                 for tx in tile_starts(w, regions.tile_size, regions.tile_overlap)]
    else:
        th, tw = h, w
        tiles = [(x, y, w, h)]
    inspected = None
    if regions.ignored is not None:
        ignored = regions.ignored
        if ignored.shape == (fh, fw):
            ignored = ignored[y:y + h, x:x + w]
        elif ignored.shape != (h, w):
            raise RegionError(f"ignore mask is {ignored.shape[1]} x {ignored.shape[0]}: it must be the ROI's "
                              f"size ({w} x {h}) or the frame's ({fw} x {fh})")
        inspected = ~ignored
    if map_scale is None:
        map_scale = min(1.0, max(model_size[0] / th, model_size[1] / tw))
    return FramePlan((fh, fw), (x, y, w, h), tiles, inspected, map_scale)


def cut(image: np.ndarray, plan: FramePlan, model_size: tuple[int, int]) -> list[np.ndarray]:
    """The model inputs of ``image``: each tile (or the ROI) resized to ``model_size`` (height, width).

    Resized here rather than by the engine's preprocessing so that a batch of 12 MP frames holds
    256 px tiles, not 512 px ones; the result is the same (area interpolation when shrinking).
    """
    if image.shape[:2] != plan.frame_size:
        raise RegionError(f"frame is {image.shape[1]} x {image.shape[0]}, planned for "
                          f"{plan.frame_size[1]} x {plan.frame_size[0]}")
    mh, mw = model_size
    inputs = []
    for x, y, w, h in plan.tiles:
        tile = image[y:y + h, x:x + w]
        if (h, w) != (mh, mw):
            shrink = h > mh or w > mw
            tile = cv2.resize(tile, (mw, mh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        inputs.append(np.ascontiguousarray(tile))
    return inputs


def stitch(plan: FramePlan, tile_maps: Sequence[np.ndarray]) -> np.ndarray:
    """One ``map_size`` map in frame coordinates from the tiles' maps (each ``h x w`` or ``1 x h x w``).

    Overlaps are averaged; pixels outside the ROI or ignored are 0.
    """
    total = np.zeros(plan.map_size, np.float32)
    weight = np.zeros(plan.map_size, np.float32)
    for (x, y, w, h), tile_map in zip(plan.tiles, tile_maps, strict=True):
        x0, y0, x1, y1 = plan.to_map(x), plan.to_map(y), plan.to_map(x + w), plan.to_map(y + h)
        tile_map = np.asarray(tile_map, np.float32).reshape(np.shape(tile_map)[-2:])
        if tile_map.shape != (y1 - y0, x1 - x0):
            tile_map = cv2.resize(tile_map, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        total[y0:y1, x0:x1] += tile_map
        weight[y0:y1, x0:x1] += 1.0
    stitched = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    keep = inspected_pixels(plan)
    stitched[~keep] = 0.0
    return stitched


def inspected_pixels(plan: FramePlan) -> np.ndarray:
    """Bool ``map_size``: the map pixels that count (inside the ROI, not ignored)."""
    keep = np.zeros(plan.map_size, bool)
    x, y, w, h = plan.roi
    x0, y0, x1, y1 = plan.to_map(x), plan.to_map(y), plan.to_map(x + w), plan.to_map(y + h)
    if plan.inspected is None:
        keep[y0:y1, x0:x1] = True
    else:  # nearest neighbour: a map pixel counts when the frame pixel at its centre is inspected
        keep[y0:y1, x0:x1] = cv2.resize(plan.inspected.astype(np.uint8), (x1 - x0, y1 - y0),
                                        interpolation=cv2.INTER_NEAREST) > 0
    return keep


def frame_score(plan: FramePlan, stitched: np.ndarray) -> float:
    """The maximum of the stitched map over inspected pixels (0 when nothing is inspected)."""
    keep = inspected_pixels(plan)
    return float(stitched[keep].max()) if keep.any() else 0.0


ScoreFn = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]


def score_frames(score: ScoreFn, images: Sequence[np.ndarray], regions: Regions | Sequence[Regions],
                 model_size: tuple[int, int], max_batch: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores (N) and anomaly maps (N, each ``1 x h x w``) of whole frames, tiled as ``regions`` say.

    ``score`` is an engine's ``score(images) -> (scores, maps)``. The model inputs of all frames are
    scored together in batches of ``max_batch`` (tiles of different frames share a batch, so batches
    are full; a TensorRT engine is built for batches up to ``max_batch`` only). Frames whose regions are
    the whole frame keep the engine's own score and map (exactly as before regions existed).
    ``regions`` is one :class:`Regions` for every frame or one per frame.
    """
    per_frame = [regions] * len(images) if isinstance(regions, Regions) else list(regions)
    plans: list[FramePlan | None] = []
    inputs: list[np.ndarray] = []
    for image, frame_regions in zip(images, per_frame, strict=True):
        if frame_regions.is_whole_frame:
            plans.append(None)
            inputs.append(image)
        else:
            plan = plan_frame(frame_regions, image.shape[:2], model_size)
            plans.append(plan)
            inputs.extend(cut(image, plan, model_size))
    input_scores, input_maps = [], []
    for start in range(0, len(inputs), max_batch):
        s, m = score(inputs[start:start + max_batch])
        input_scores.append(np.asarray(s, np.float32).reshape(-1))
        input_maps.extend(np.asarray(m, np.float32))
    flat_scores = np.concatenate(input_scores) if input_scores else np.zeros(0, np.float32)
    scores, maps, at = np.zeros(len(images), np.float32), [], 0
    for i, plan in enumerate(plans):
        if plan is None:
            scores[i] = flat_scores[at]
            maps.append(input_maps[at].reshape(1, *input_maps[at].shape[-2:]))
            at += 1
            continue
        stitched = stitch(plan, input_maps[at:at + len(plan.tiles)])
        at += len(plan.tiles)
        scores[i] = frame_score(plan, stitched)
        maps.append(stitched[None])
    return scores, maps
