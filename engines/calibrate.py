"""``lineguard calibrate``: a threshold for a model from a line's own normal images.

A line whose camera, lighting or material differs a little from the training data scores its good parts
a little differently; its threshold is best set on its own good images. This scores a folder of them
through the model's graph exactly as the processors do (regions included) and sets the threshold as
training does: the upper confidence bound of the ``1 - target`` quantile
(:func:`~lineguard.engines.thresholds.normal_quantile_bound`). It writes it as the line's override
(``processor.threshold_overrides.<line>.<product>`` in a YAML file, ``--line`` and ``--write``), or into the
model's manifest (``--update-manifest``: every line then gets it), or only prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .data import list_images, load_rgb
from .manifest import ONNX_FILE, Manifest
from .regions import Regions, score_frames
from .runtime import ScoringEngine
from .thresholds import DEFAULT_CONFIDENCE, QuantileBound, normal_quantile_bound


def score_images(engine: ScoringEngine, paths: list[Path], batch: int = 16) -> np.ndarray:
    """Whole-frame scores of image files, as a processor computes them for this model."""
    h, w = engine.manifest.input.height, engine.manifest.input.width
    regions = Regions.from_manifest(engine.manifest.regions, engine.model_dir)
    scores = []
    for start in range(0, len(paths), batch):
        images = [load_rgb(p) for p in paths[start:start + batch]]
        s, _ = score_frames(engine.score, images, regions, (h, w), max(batch, engine.max_batch))
        scores.append(np.asarray(s, dtype=np.float64))
    return np.concatenate(scores) if scores else np.zeros(0)


def calibrate_on_images(model_dir: str | Path, images: str | Path, *, target_false_reject_rate: float | None = None,
                        confidence: float = DEFAULT_CONFIDENCE, onnx_file: str = ONNX_FILE,
                        batch: int = 16) -> tuple[QuantileBound, dict[str, Any]]:
    """(the bound, figures): the threshold for ``images`` and how the model's current one fares on them."""
    engine = ScoringEngine(model_dir, onnx_file=onnx_file)
    target = target_false_reject_rate or engine.manifest.thresholds.target_false_reject_rate or 0.01
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no images in {images}")
    scores = score_images(engine, paths, batch)
    bound = normal_quantile_bound(scores, target, confidence)
    figures = {
        "n_images": len(paths), "target_false_reject_rate": target, "confidence": confidence,
        "threshold_now": engine.threshold, "false_reject_rate_now": float((scores > engine.threshold).mean()),
        "threshold": bound.value, "rank": bound.rank, "achieved_confidence": bound.achieved_confidence,
        "min_normal_count": bound.min_count, "sufficient": bound.sufficient,
    }
    return bound, figures


def write_override(path: Path, line: str, product: str, threshold: float) -> None:
    """Set ``processor.threshold_overrides.<line>.<product>`` in the YAML file (created if missing)."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at top level")
    overrides = data.setdefault("processor", {}).setdefault("threshold_overrides", {})
    overrides.setdefault(line, {})[product] = round(threshold, 6)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def update_manifest(model_dir: str | Path, figures: dict[str, Any], images: str | Path) -> None:
    """Put the new threshold in force in the model's own manifest (FP32 graph), recording where it came from."""
    manifest = Manifest.load(model_dir)
    t = manifest.thresholds
    t.normal_quantile = figures["threshold"]
    t.target_false_reject_rate, t.confidence = figures["target_false_reject_rate"], figures["confidence"]
    if t.method == "normal_quantile":
        t.value = figures["threshold"]
    manifest.calibration["recalibrated"] = {"images": str(images), **{k: figures[k] for k in (
        "n_images", "threshold_now", "threshold", "rank", "achieved_confidence")}}
    manifest.save(model_dir)


def run_calibrate_cli(args: argparse.Namespace, settings: Any) -> int:
    try:
        bound, f = calibrate_on_images(args.model, args.images, target_false_reject_rate=args.false_reject_rate,
                                       confidence=args.confidence, onnx_file=args.onnx_file, batch=args.batch)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lineguard calibrate: {exc}")
        return 2
    print(f"calibrate: model={args.model} images={f['n_images']} target_false_reject_rate={f['target_false_reject_rate']} "
          f"confidence={f['confidence']}")
    print(f"  threshold now {f['threshold_now']:.6g} rejects {f['false_reject_rate_now']:.1%} of these images")
    if not bound.sufficient:
        print(f"  too few images: {f['min_normal_count']} are needed for the bound, these {f['n_images']} give "
              f"{f['achieved_confidence']:.0%} confidence (their maximum plus a margin: {bound.value:.6g})")
        if (args.write or args.update_manifest) and not args.force:
            print("  nothing written: give more normal images, or --force")
            return 2
    else:
        print(f"  threshold {bound.value:.6g} (order statistic {bound.rank} of {bound.n}): false-reject rate at or "
              f"below the target with {f['achieved_confidence']:.1%} confidence")
    if args.write:
        if not args.line:
            print("lineguard calibrate: --write needs --line (the override is per line)")
            return 2
        product = args.product or Path(args.model).resolve().name.split("@")[0]
        write_override(Path(args.write), args.line, product, bound.value)
        print(f"  written: processor.threshold_overrides.{args.line}.{product} = {bound.value:.6g} in {args.write}")
    if args.update_manifest:
        if args.onnx_file != ONNX_FILE:
            print("lineguard calibrate: --update-manifest sets model.onnx's threshold; score with it")
            return 2
        update_manifest(args.model, f, args.images)
        print(f"  written: thresholds.normal_quantile = {bound.value:.6g} in {Path(args.model) / 'manifest.json'}")
    return 0

