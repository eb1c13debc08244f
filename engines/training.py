"""From a folder of normal images to a calibrated model folder (model.onnx + manifest.json).

The steps are the same for every engine: split the normal images into fit
and calibration sets, fit, score the calibration set, calibrate thresholds
(and F1-optimal ones when labelled defects are given), export, write the
manifest. Engine-specific work stays behind :class:`AnomalyModel`.

Where a held-out fifth is too few normal images for the threshold's confidence bound
(:func:`~lineguard.engines.thresholds.min_normal_count`, 230 at a 1% target) and an engine refits
quickly, every normal image is scored out of fold instead (:func:`calibration_folds_for`): K models, each
fitted on the other folds, score their own fold; the shipped model is fitted on all images.
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
from .thresholds import DEFAULT_CONFIDENCE, min_normal_count
from .data import DatasetError, list_images, load_rgb, normal_images
from .regions import IGNORE_MASK_FILE, Regions, cut, inspected_pixels, plan_frame, score_frames

log = logging.getLogger(__name__)

# kind -> "module:function" building an unfitted AnomalyModel from keyword options.
# Imported lazily: PatchCore and EfficientAD need torch (the `train` extra), the baseline does not.
MODEL_FACTORIES: dict[str, str] = {
    "baseline": "lineguard.engines.baseline.model:BaselineModel",
    "patchcore": "lineguard.engines.patchcore.model:build_model",
    "efficientad": "lineguard.engines.efficientad.model:build_model",
    "simplenet": "lineguard.engines.simplenet.model:build_model",
    "draem": "lineguard.engines.draem.model:build_model",
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


# Engines that refit in about the time they take to score their training set: out-of-fold calibration costs
# them K more fits. EfficientAD's training loop does not (give calibration_folds explicitly for it).
OUT_OF_FOLD_KINDS = {"baseline", "patchcore"}
DEFAULT_FOLDS = 5


def calibration_folds_for(kind: str, n_images: int, calibration_fraction: float, target_false_reject_rate: float,
                          confidence: float = DEFAULT_CONFIDENCE, folds: int | None = None) -> int:
    """How many folds to calibrate out of fold with (0: a held-out split).

    ``folds`` given: that (0 or 1 mean the held-out split). ``None`` (auto): :data:`DEFAULT_FOLDS` where the
    held-out split would hold fewer images than the confidence bound needs, all the images hold enough, and
    ``kind`` refits quickly (:data:`OUT_OF_FOLD_KINDS`); else 0.
    """
    if folds is not None:
        if folds > n_images:
            raise DatasetError(f"{folds} calibration folds need at least {folds} normal images, found {n_images}")
        return folds if folds >= 2 else 0
    need = min_normal_count(target_false_reject_rate, confidence)
    n_held_out = max(1, int(round(n_images * calibration_fraction)))
    if kind in OUT_OF_FOLD_KINDS and n_held_out < need <= n_images:
        return DEFAULT_FOLDS
    return 0


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Each of ``n`` images' fold (0..folds-1), shuffled by ``seed``, fold sizes differing by at most one."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=int)
    fold[order] = np.arange(n) % folds
    return fold


def out_of_fold_scores(kind: str, options: dict[str, Any], paths: list[Path], folds: int, seed: int,
                       regions: Regions, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every image's score (and map values) from a model fitted without its fold, scored by its exported graph."""
    fold = fold_of(len(paths), folds, seed)
    scores = np.empty(len(paths))
    maps: list[np.ndarray | None] = [None] * folds
    for k in range(folds):
        held = np.nonzero(fold == k)[0]
        model = model_factory(kind)(**options)
        model.fit([x for i in np.nonzero(fold != k)[0] for x in model_inputs(load_rgb(paths[i]), regions, size)])
        with tempfile.TemporaryDirectory() as tmp:
            model.export_onnx(Path(tmp) / "model.onnx")
            s, m = score_image_files(GraphScorer(Path(tmp) / "model.onnx", model), [paths[i] for i in held],
                                     regions, size)
        scores[held] = s
        maps[k] = m
        log.info("calibration fold %d/%d: %d images scored by a model fitted on %d", k + 1, folds, len(held),
                 len(paths) - len(held))
        del model
    return scores, np.concatenate([m.reshape(-1) for m in maps if m is not None])


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
          seed: int = 0, regions: Regions | None = None, calibration_folds: int | None = None,
          confidence: float = DEFAULT_CONFIDENCE, **options: Any) -> Path:
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
    folds = calibration_folds_for(kind, len(paths), calibration_fraction, target_false_reject_rate, confidence,
                                  calibration_folds)
    if folds:  # every image calibrates (scored out of fold) and every image is fitted on
        fit_paths, cal_paths = list(paths), list(paths)
        log.info("training %s on %d normal images (calibrated on all of them, %d-fold out of fold), %s", kind,
                 len(fit_paths), folds, regions.describe())
    else:
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
        if folds:
            cal_scores, cal_maps = out_of_fold_scores(kind, options, paths, folds, seed, regions, size)
        else:
            cal_scores, cal_maps = score_image_files(scorer, cal_paths, regions, size)
        defect_scores = None
        if defects_dir is not None:
            defect_scores, _ = score_image_files(scorer, list_images(defects_dir), regions, size)
        thresholds, stats = calibrate(cal_scores, defect_scores, target_false_reject_rate, confidence)
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
                # >= 2: calibrated out of fold on all the training images, none held out (a bank update then
                # needs --calibration DIR to recalibrate).
                "calibration_folds": folds,
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
