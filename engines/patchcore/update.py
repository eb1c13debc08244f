"""Learning from feedback without a refit: confirmed-good images (false alarms) added to a PatchCore memory bank.

``lineguard models update-bank --model DIR --add IMAGES --out NEW_DIR`` (:func:`update_model`):

1. The fitted model is rebuilt from its folder: the network from the manifest (backbone, layers, sizes;
   refused unless the backbone weights' sha256 is the one recorded), the bank from the ``memory_bank``
   constant of ``model.onnx`` (the exported graph carries the bank, there is no other copy).
2. :meth:`PatchCore.add_to_bank`: the new images' patch features, extracted by the same code as the fit,
   and the greedy coreset continued from the bank, which adds only patches the bank does not cover yet.
3. The whole graph is exported again (the bank is a constant in it) into a NEW model folder; the parent
   folder is never written to. Its manifest records the lineage: parent version and graph, the images
   added, the method and its figures.
4. The threshold is recalibrated on the parent's held-out normal images when they can be found again
   (the training data is where the manifest says, unchanged by its fingerprint, and the split reproduces
   the recorded count), or on ``calibration_dir``; otherwise the parent's threshold is kept, and the
   manifest says why. A bank only grows, so no patch distance rises: keeping it errs on the side of
   fewer alarms than the target false-reject rate, never more.

Derived graphs (``model.int8.onnx``, ``model.fp16.onnx``) are not carried over: run ``lineguard export``
on the new folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..base import calibrate
from ..data import DatasetError, list_images, load_rgb, normal_images
from ..manifest import DERIVED_FILES, MANIFEST_FILE, ONNX_FILE, Manifest, images_fingerprint, sha256_file
from ..regions import IGNORE_MASK_FILE, Regions
from ..training import GraphScorer, model_inputs, score_image_files, split_calibration
from .model import PatchCore

log = logging.getLogger(__name__)

BANK_INITIALIZER = "memory_bank"  # the buffer's name, kept by the exporter as the graph constant's name


def read_memory_bank(onnx_path: str | Path) -> np.ndarray:
    """The memory bank (M x D float32) stored as a constant in an exported PatchCore graph."""
    graph = onnx.load(str(onnx_path)).graph
    for init in graph.initializer:
        if init.name == BANK_INITIALIZER:
            return numpy_helper.to_array(init).astype(np.float32)
    raise ValueError(f"{onnx_path} has no {BANK_INITIALIZER!r} constant: not a lineguard PatchCore graph")


def load_fitted(model_dir: str | Path, *, weights_path: str | None = None,
                progress: bool = False) -> tuple[PatchCore, Manifest]:
    """The :class:`PatchCore` a model folder was exported from, memory bank included, and its manifest."""
    manifest = Manifest.load(model_dir)
    manifest.verify(model_dir)
    if manifest.kind != "patchcore":
        raise ValueError(f"{model_dir} is a {manifest.kind} model: only PatchCore has a memory bank to update")
    extra, backbone = manifest.extra, manifest.backbone or {}
    model = PatchCore(
        backbone=backbone["name"], layers=backbone["layers"],
        input_size=(manifest.input.height, manifest.input.width), coreset_ratio=extra["coreset_ratio"],
        target_dim=extra["embedding_dim"] if extra["embedding_dim"] < extra["feature_dim"] else None,
        num_neighbors=extra["num_neighbors"], sigma=extra["sigma"], projection_dim=extra["projection_dim"],
        weights_path=weights_path, seed=extra.get("seed", 0), progress=progress,
    )
    # Other weights would give other features: the new patches would not be comparable with the bank's.
    if model.backbone_info["weights_sha256"] != backbone.get("weights_sha256"):
        raise ValueError(f"the {backbone['name']} weights here ({model.backbone_info['weights_file']}) are not the "
                         f"ones {model_dir} was fitted with (sha256 differs): give --weights-path")
    if (model.input.mean, model.input.std) != (manifest.input.mean, manifest.input.std):
        raise ValueError(f"{model_dir}: its input normalisation is not {backbone['name']}'s")
    bank = read_memory_bank(Path(model_dir) / ONNX_FILE)
    if bank.shape[1] != model.model.embedding_dim:
        raise ValueError(f"{model_dir}: bank of width {bank.shape[1]}, the network makes {model.model.embedding_dim}")
    model.model.set_memory_bank(torch.from_numpy(bank))
    return model, manifest


def calibration_images(manifest: Manifest, calibration_dir: str | Path | None = None) -> tuple[list[Path], str]:
    """The normal images to recalibrate on, and how they were found (or why there are none)."""
    if calibration_dir is not None:
        return list_images(calibration_dir), f"the images in {calibration_dir}"
    training = manifest.training
    if training.get("calibration_folds"):  # every training image is in the bank: none is held out
        return [], (f"the model was calibrated out of fold on all {training.get('n_images')} training images, "
                    "none held out (give --calibration DIR)")
    data = training.get("data")
    if not data or not Path(data).exists():
        return [], f"the training data {data!r} is not here"
    try:
        paths = normal_images(data)
    except DatasetError as exc:
        return [], str(exc)
    if images_fingerprint(paths) != training.get("images_sha256"):
        return [], f"the images under {data} changed since the fit (fingerprint differs)"
    # Older manifests do not record the split's seed and fraction: train()'s defaults, checked by the count.
    _, cal = split_calibration(paths, training.get("calibration_fraction", 0.2), training.get("seed", 0))
    if len(cal) != training.get("n_calibration"):
        return [], f"the calibration split of {data} could not be reproduced"
    return cal, f"the parent's {len(cal)} held-out normal images of {data}"


def update_model(model_dir: str | Path, add: str | Path | list[Path], out: str | Path, *,
                 version: str | None = None, name: str | None = None, max_picks: int | None = None,
                 calibration_dir: str | Path | None = None, weights_path: str | None = None,
                 progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write ``out``: the model of ``model_dir`` with the images of ``add`` learnt. Returns (manifest path, lineage)."""
    started = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError("--out must be a new folder: the parent version stays as it is (for rollback)")
    if (out / MANIFEST_FILE).exists():
        raise ValueError(f"{out} already holds a model: choose a new folder")
    model, parent = load_fitted(model_dir, weights_path=weights_path, progress=progress)
    add_paths = list(add) if isinstance(add, list) else list_images(add)
    if not add_paths:
        raise DatasetError(f"no images to add in {add}")
    size = (model.input.height, model.input.width)
    regions = Regions.from_manifest(parent.regions, model_dir)  # tiles or ROI: cut as the fit cut them
    inputs = [x for p in add_paths for x in model_inputs(load_rgb(p), regions, size)]

    before, _ = score_image_files(GraphScorer(model_dir / ONNX_FILE, model), add_paths, regions, size)
    figures = model.add_to_bank(inputs, max_picks)

    cal_paths, cal_source = calibration_images(parent, calibration_dir)
    added = {sha256_file(p) for p in add_paths}
    cal_paths = [p for p in cal_paths if sha256_file(p) not in added]  # a learnt image would bias the threshold
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / ONNX_FILE
        model.export_onnx(onnx_tmp)
        scorer = GraphScorer(onnx_tmp, model)
        after, _ = score_image_files(scorer, add_paths, regions, size)
        thresholds, calibration, display = parent.thresholds, parent.calibration, parent.map_display_range
        if cal_paths:
            cal_scores, cal_maps = score_image_files(scorer, cal_paths, regions, size)
            thresholds, calibration = calibrate(cal_scores, None, parent.thresholds.target_false_reject_rate or 0.01)
            display = (float(np.median(cal_maps)),
                       float(max(thresholds.value * 1.5, np.quantile(cal_maps, 0.999))))
            if parent.thresholds.method == "f1_optimal":  # no labelled defects here to choose it again
                thresholds.value, thresholds.method = parent.thresholds.value, "f1_optimal"
                thresholds.f1_optimal = parent.thresholds.f1_optimal
                action = (f"F1-optimal threshold kept (no labelled defects here); normal quantile "
                          f"recalibrated on {cal_source}")
            else:
                action = f"recalibrated on {cal_source}"
        else:
            action = f"kept the parent's: {cal_source}"

        lineage = {
            "method": "patchcore_bank_update",
            "parent_name": parent.name, "parent_version": parent.version, "parent_onnx_sha256": parent.onnx_sha256,
            "images_dir": str(add) if not isinstance(add, list) else None,
            "images_sha256": images_fingerprint(add_paths), "n_inputs": len(inputs),
            **figures,
            "threshold": {"action": action, "parent_value": parent.thresholds.value, "value": thresholds.value,
                          "n_calibration": len(cal_paths)},
            "added_images_score": {"before_mean": float(before.mean()), "after_mean": float(after.mean()),
                                   "before_max": float(before.max()), "after_max": float(after.max())},
            "update_seconds": round(time.perf_counter() - started, 2),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The parent's extra less its derived graphs (not copied), with the new bank's size and the chain.
        extra = {k: v for k, v in parent.extra.items() if k not in DERIVED_FILES}
        extra.update(memory_bank_size=figures["bank_size_after"], lineage=[*parent.extra.get("lineage", []), lineage])
        out.mkdir(parents=True, exist_ok=True)
        if (model_dir / IGNORE_MASK_FILE).exists():
            shutil.copyfile(model_dir / IGNORE_MASK_FILE, out / IGNORE_MASK_FILE)
        path = model.save(out, name=name or parent.name,
                          version=version or time.strftime("%Y%m%d%H%M%S", time.gmtime()), thresholds=thresholds,
                          calibration=calibration, map_display_range=tuple(display),
                          training=dict(parent.training), backbone=parent.backbone, extra=extra,
                          onnx_source=onnx_tmp, regions=parent.regions)
    log.info("bank update: %d images, +%d patches (bank %d -> %d), threshold %s, in %.1fs", len(add_paths),
             figures["patches_added"], figures["bank_size_before"], figures["bank_size_after"], action,
             time.perf_counter() - started)
    return path, lineage
