"""From a folder of normal images to a calibrated model folder (model.onnx + manifest.json).

The steps are the same for every engine: split the normal images into fit
and calibration sets, fit, score the calibration set, calibrate thresholds
(and F1-optimal ones when labelled defects are given), export, write the
manifest. Engine-specific work stays behind :class:`AnomalyModel`.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .base import AnomalyModel, calibrate
from .data import DatasetError, list_images, load_rgb, normal_images
from .regions import IGNORE_MASK_FILE, Regions, cut, inspected_pixels, plan_frame, score_frames

log = logging.getLogger(__name__)

# kind -> "module:function" building an unfitted AnomalyModel from keyword options.
# Imported lazily: PatchCore and EfficientAD need torch (the `train` extra), the baseline does not.
MODEL_FACTORIES: dict[str, str] = {
    "baseline": "lineguard.engines.baseline.model:BaselineModel",
    "patchcore": "lineguard.engines.patchcore.model:build_model",
    "efficientad": "lineguard.engines.efficientad.model:build_model",
}


def model_factory(kind: str) -> Callable[..., AnomalyModel]:
    if kind not in MODEL_FACTORIES:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(MODEL_FACTORIES)}")
    module_name, attr = MODEL_FACTORIES[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"model kind {kind!r} needs {exc.name!r}: install the training extra (make train-deps)"
        ) from None
    return getattr(module, attr)


def split_calibration(paths: list[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of the normal images (at least 1) to calibrate thresholds on."""
    if len(paths) < 2:
        raise DatasetError(f"need at least 2 normal images, found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_cal = min(len(paths) - 1, max(1, int(round(len(paths) * fraction))))
    cal = sorted(paths[i] for i in order[:n_cal])
    fit = sorted(paths[i] for i in order[n_cal:])
    return fit, cal


class GraphScorer:
    """Scores with a model's exported graph exactly as :class:`ScoringEngine` will (same preprocessing,
    ONNX Runtime): thresholds are calibrated on the scores production computes, and for the torch engines
    this is several times faster on CPU than the eager torch reference."""

    def __init__(self, onnx_path: str | Path, model: AnomalyModel) -> None:
        import onnxruntime as ort

        self.spec = model.input_manifest()
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def score(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from .runtime import preprocess

        scores, maps = self.session.run(["score", "anomaly_map"], {"image": preprocess(images, self.spec)})
        return scores.reshape(-1), maps


def train(kind: str, data: str | Path, out: str | Path, *, name: str | None = None,
          version: str | None = None, calibration_fraction: float = 0.2,
          target_false_reject_rate: float = 0.01, defects_dir: str | Path | None = None,
          seed: int = 0, regions: Regions | None = None, **options: Any) -> Path:
    """Fit ``kind`` on ``data`` (MVTec root or folder of normal images) and write ``out``.

    With ``regions`` (a camera's ROI, tiles, ignore mask) the model is fitted on the tiles of the training
    images, and thresholds are calibrated on whole-frame scores (the stitched map's maximum over inspected
    pixels): the score a processor computes for the camera's frames, cut by the same code.
    """
    started = time.perf_counter()
    regions = regions or Regions()
    model = model_factory(kind)(**options)
    size = (model.input.height, model.input.width)
    paths = normal_images(data)
    fit_paths, cal_paths = split_calibration(paths, calibration_fraction, seed)
    log.info("training %s on %d normal images (%d held out for calibration), %s", kind, len(fit_paths),
             len(cal_paths), regions.describe())
    fit_images = [model_input for p in fit_paths for model_input in model_inputs(load_rgb(p), regions, size)]
    model.fit(fit_images)
    fit_s = time.perf_counter() - started

    # Export once, calibrate with the exported graph (the scores production computes), then save that file.
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "model.onnx"
        model.export_onnx(onnx_tmp)
        scorer = GraphScorer(onnx_tmp, model)
        cal_scores, cal_maps = score_image_files(scorer, cal_paths, regions, size)
        defect_scores = None
        if defects_dir is not None:
            defect_scores, _ = score_image_files(scorer, list_images(defects_dir), regions, size)
        thresholds, stats = calibrate(cal_scores, defect_scores, target_false_reject_rate)
        # Heatmap colours: the median normal pixel is "cold", 1.5x the threshold is "hot".
        display = (float(np.median(cal_maps)), float(max(thresholds.value * 1.5, np.quantile(cal_maps, 0.999))))
        from .manifest import images_fingerprint

        Path(out).mkdir(parents=True, exist_ok=True)
        if regions.ignored is not None:  # the model carries its mask: `lineguard eval` scores as it was calibrated
            cv2.imwrite(str(Path(out) / IGNORE_MASK_FILE), regions.ignored.astype(np.uint8) * 255)
        path = model.save(
            out,
            name=name or Path(out).name,
            version=version or time.strftime("%Y%m%d%H%M%S", time.gmtime()),
            thresholds=thresholds,
            calibration=stats,
            map_display_range=display,
            training={
                "n_images": len(fit_paths),
                "n_inputs": len(fit_images),  # tiles when tiled: what the model was fitted on
                "n_calibration": len(cal_paths),
                # With the fingerprint, enough to find the held-out images again (a bank update recalibrates on them).
                "calibration_fraction": calibration_fraction,
                "seed": seed,
                "images_sha256": images_fingerprint(paths),
                "fit_seconds": round(fit_s, 3),
                "data": str(data),
            },
            backbone=getattr(model, "backbone_info", None),
            extra=getattr(model, "manifest_extra", None),
            onnx_source=onnx_tmp,
            regions=None if regions.is_whole_frame else regions.to_manifest(),
        )
    log.info("wrote %s (threshold %.4f, %s) in %.1fs", path, thresholds.value, thresholds.method,
             time.perf_counter() - started)
    return path


def model_inputs(image: np.ndarray, regions: Regions, size: tuple[int, int]) -> list[np.ndarray]:
    """What the model is fitted on from one training image: its tiles (or ROI, or itself), at the input size."""
    if regions.is_whole_frame:
        return [cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                if image.shape[:2] != tuple(size) else image]
    return cut(image, plan_frame(regions, image.shape[:2], size), size)


def score_image_files(scorer: AnomalyModel | GraphScorer, paths: list[Path], regions: Regions,
                      size: tuple[int, int], frames_per_batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Whole-frame scores and the inspected map values of image files, as the processors compute them.

    Returns (scores N, map values): all maps stacked where they share a shape (whole frames), else the
    inspected pixels' values flattened (what the heatmap colour range is taken from).
    """
    scores, maps = [], []
    for i in range(0, len(paths), frames_per_batch):
        chunk = [load_rgb(p) for p in paths[i:i + frames_per_batch]]
        if regions.is_whole_frame:  # resized on loading, as before regions existed
            chunk = [model_inputs(image, regions, size)[0] for image in chunk]
        s, m = score_frames(scorer.score, chunk, regions, size)
        scores.append(s)
        if regions.is_whole_frame:
            maps.extend(m)
        else:  # only inspected pixels: zeros outside the ROI would pull the colour range down
            maps.extend(stitched[0][inspected_pixels(plan_frame(regions, image.shape[:2], size))]
                        for image, stitched in zip(chunk, m))
    return np.concatenate(scores), np.stack(maps) if regions.is_whole_frame else np.concatenate(maps)
