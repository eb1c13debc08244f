"""``lineguard eval``: score an MVTec-layout test set through the ONNX path and report metrics.

The model is run exactly as production runs it: :class:`ScoringEngine`
(manifest + ``model.onnx``, ``model.int8.onnx`` or ``model.fp16.onnx`` in ONNX Runtime, uint8
preprocessing included). Metrics are computed at the model's input
resolution (masks are resized to it with nearest neighbour).

Output: a JSON document (``image_auroc``, ``pixel_auroc``, ``pro``,
``f1_max``, ``per_defect``, ``n_images``, ``images_per_s``, ``operating_point``, ...), an
optional Markdown table and an optional PNG sheet of heatmap overlays.

AUROC ranks; a line decides at one threshold. ``operating_point`` says what that threshold does on the
test set: the false-reject rate on the good test images against the target it was calibrated for, and
the catch rate (recall on the defective images) there and at fixed false-reject rates of 1% and 5%,
whose thresholds are set on the good test images themselves (an oracle operating point, for comparison).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .data import TestSample, load_mask, load_rgb, test_samples
from .manifest import ONNX_FILE
from .regions import Regions, score_frames
from .evaluation_metrics import auroc, f1_max, pro_auc
from .runtime import ScoringEngine
from .thresholds import threshold_at_rate

log = logging.getLogger(__name__)


@dataclass
class ScoredTestSet:
    samples: list[TestSample]
    scores: np.ndarray  # N
    maps: np.ndarray  # N x h x w
    masks: np.ndarray  # N x h x w, bool
    has_mask: np.ndarray  # N, bool: normal images, or defective ones whose mask file exists
    images_per_s: float


def score_test_set(engine: ScoringEngine, samples: list[TestSample], batch: int = 16) -> ScoredTestSet:
    """Decode, score (timing only the engine) and load masks for every test sample."""
    h, w = engine.manifest.input.height, engine.manifest.input.width
    # A model trained on a camera's ROI or tiles scores whole frames as the processors do: cut, scored, stitched.
    regions = Regions.from_manifest(engine.manifest.regions, engine.model_dir)
    scores, maps = [], []
    engine_s = 0.0
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        images = [load_rgb(s.path) for s in chunk]
        t0 = time.perf_counter()
        s, m = score_frames(engine.score, images, regions, (h, w), max(batch, engine.max_batch))
        engine_s += time.perf_counter() - t0
        scores.append(s)
        if len({x.shape for x in m}) > 1:
            raise ValueError("test frames of a model with regions must all have the same size")
        maps.append(np.stack([x[0] for x in m]))
    map_size = maps[0].shape[-2:]  # the model's input, or the stitched map of a frame (regions)
    if any(m.shape[-2:] != map_size for m in maps):
        raise ValueError("test frames of a model with regions must all have the same size")
    masks = np.stack([load_mask(s.mask_path, map_size) for s in samples])
    has_mask = np.array([(not s.is_defective) or s.mask_path is not None for s in samples])
    return ScoredTestSet(samples, np.concatenate(scores), np.concatenate(maps), masks, has_mask,
                         len(samples) / engine_s if engine_s > 0 else float("nan"))


ORACLE_FALSE_REJECT_RATES = (0.01, 0.05)


def operating_point(scores: np.ndarray, defective: np.ndarray, threshold: float,
                    target_false_reject_rate: float | None,
                    rates: tuple[float, ...] = ORACLE_FALSE_REJECT_RATES) -> dict[str, Any]:
    """What ``score > threshold`` does on a labelled set, and the catch rates at fixed false-reject rates.

    ``false_reject_rate``: good images rejected at ``threshold``; ``catch_rate``: defective ones rejected.
    ``at_false_reject_rate``: per rate, the threshold set on these good images to reject at most that share
    of them (an oracle: it knows the test set) and the catch rate there.
    """
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(defective, dtype=bool)
    good, bad = scores[~defective], scores[defective]
    frr = float((good > threshold).mean()) if good.size else None
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "target_false_reject_rate": target_false_reject_rate,
        "n_good": int(good.size),
        "n_defective": int(bad.size),
        "false_reject_rate": frr,
        "false_rejects": int((good > threshold).sum()),
        # realised / target: 1 is on target, 2 twice the false alarms the line was promised
        "false_reject_ratio": (round(frr / target_false_reject_rate, 3)
                               if frr is not None and target_false_reject_rate else None),
        "catch_rate": float((bad > threshold).mean()) if bad.size else None,
        "at_false_reject_rate": {},
        "oracle_note": "thresholds of at_false_reject_rate are set on the good test images themselves",
    }
    if good.size:
        for rate in rates:
            t = threshold_at_rate(good, rate)
            out["at_false_reject_rate"][str(rate)] = {
                "threshold": t,
                "false_reject_rate": float((good > t).mean()),
                "catch_rate": float((bad > t).mean()) if bad.size else None,
            }
    return out


def _metrics(scored: ScoredTestSet, select: np.ndarray) -> dict[str, Any]:
    labels = np.array([s.is_defective for s in scored.samples])[select]
    out: dict[str, Any] = {
        "n_images": int(select.sum()),
        "n_defective": int(labels.sum()),
        "image_auroc": auroc(scored.scores[select], labels),
        "f1_max": f1_max(scored.scores[select], labels),
        "pixel_auroc": None,
        "pro": None,
    }
    pixel = select & scored.has_mask
    defective_with_mask = pixel & np.array([s.is_defective for s in scored.samples])
    if defective_with_mask.any():
        out["pixel_auroc"] = auroc(scored.maps[pixel], scored.masks[pixel])
        out["pro"] = pro_auc(scored.maps[pixel], scored.masks[pixel])
    return out


def evaluate(model_dir: str | Path, data: str | Path, *, batch: int = 16, onnx_file: str = ONNX_FILE,
             threads: int = 0, providers: list[str] | None = None) -> tuple[dict[str, Any], ScoredTestSet,
                                                                             ScoringEngine]:
    """Metrics overall and per defect type (each defect type against all normal test images)."""
    engine = ScoringEngine(model_dir, onnx_file=onnx_file, threads=threads, providers=providers)
    samples = test_samples(data)
    scored = score_test_set(engine, samples, batch)
    defects = np.array([s.defect for s in samples])
    good = defects == "good"
    report: dict[str, Any] = {
        "model": str(model_dir),
        "model_name": engine.name,
        "model_version": engine.version,
        "kind": engine.manifest.kind,
        "onnx_file": onnx_file,
        "providers": engine.providers,
        "data": str(data),
        "input_size": [engine.manifest.input.height, engine.manifest.input.width],
        "threshold": engine.threshold,
        "batch": batch,
        "images_per_s": round(scored.images_per_s, 2),
        "n_pixel_images": int(scored.has_mask.sum()),
    }
    report.update(_metrics(scored, np.ones(len(samples), dtype=bool)))
    # Accuracy of the deployed threshold, the number a line operator sees.
    predicted = scored.scores > engine.threshold
    report["threshold_accuracy"] = float((predicted == ~good).mean())
    thresholds = engine.manifest.thresholds
    report["operating_point"] = operating_point(scored.scores, ~good, engine.threshold,
                                                thresholds.target_false_reject_rate)
    report["operating_point"]["method"] = thresholds.method
    report["operating_point"]["confidence"] = thresholds.confidence
    report["per_defect"] = {
        defect: _metrics(scored, good | (defects == defect))
        for defect in sorted(set(defects.tolist()) - {"good"})
    }
    for defect, m in report["per_defect"].items():
        m["catch_rate"] = float((scored.scores[defects == defect] > engine.threshold).mean())
    if scored.has_mask.sum() < len(samples):
        log.warning("%d defective images have no mask: left out of pixel metrics", len(samples) - scored.has_mask.sum())
    return report, scored, engine


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def operating_point_lines(op: dict[str, Any]) -> list[str]:
    """The operating point in words, one Markdown bullet a line."""
    target = op.get("target_false_reject_rate")
    how = op.get("method") or "?"
    if how == "normal_quantile" and target:
        how = f"calibrated for a {target:.2%} false-reject rate"
        if op.get("confidence"):
            how += f" at {op['confidence']:.0%} confidence"
    lines = [f"- at the calibrated threshold {op['threshold']:.4f} ({how}): false-reject rate "
             f"{_pct(op['false_reject_rate'])} ({op['false_rejects']}/{op['n_good']} good test images)"
             + (f" vs target {target:.2%} ({op['false_reject_ratio']:.2f}x)"
                if target and op.get("false_reject_ratio") is not None else "")
             + f"; catch rate {_pct(op['catch_rate'])} of {op['n_defective']} defective"]
    for rate, point in op["at_false_reject_rate"].items():
        lines.append(f"- at a {float(rate):.0%} false-reject rate (oracle: threshold {point['threshold']:.4f} set on "
                     f"the good test images): catch rate {_pct(point['catch_rate'])}")
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        f"### {report['model_name']} ({report['kind']}, {report['onnx_file']}) on `{report['data']}`",
        "",
        "| defect | images | image AUROC | pixel AUROC | PRO (30% FPR) | F1-max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = list(report["per_defect"].items()) + [("**overall**", report)]
    for name, m in rows:
        lines.append(f"| {name} | {m['n_images']} | {_fmt(m['image_auroc'])} | {_fmt(m['pixel_auroc'])} "
                     f"| {_fmt(m['pro'])} | {_fmt(m['f1_max'])} |")
    lines += ["", f"{report['images_per_s']:.1f} images/s at batch {report['batch']} "
                  f"({', '.join(report['providers'])}); threshold {report['threshold']:.4f} "
                  f"classifies {report['threshold_accuracy']:.1%} of the test images correctly.", ""]
    if "operating_point" in report:
        lines += ["Operating point:", "", *operating_point_lines(report["operating_point"]), ""]
    return "\n".join(lines)


def _sample_for_sheet(samples: list[TestSample], count: int) -> list[int]:
    """Up to ``count`` indices, round-robin over defect types so every type shows."""
    by_defect: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_defect.setdefault(s.defect, []).append(i)
    picked: list[int] = []
    while len(picked) < min(count, len(samples)):
        for indices in by_defect.values():
            if indices and len(picked) < count:
                picked.append(indices.pop(0))
    return picked


def heatmap_sheet(scored: ScoredTestSet, engine: ScoringEngine, path: str | Path, count: int = 16,
                  columns: int = 4, tile: int = 256) -> Path:
    """A PNG grid: each test image with its anomaly map overlaid (JET colours over the manifest's display
    range), the ground-truth outline in green, and a caption with defect type and score."""
    low, high = engine.manifest.map_display_range
    picked = _sample_for_sheet(scored.samples, count)
    caption_h = 22
    rows = (len(picked) + columns - 1) // columns
    sheet = np.full((rows * (tile + caption_h), columns * tile, 3), 255, np.uint8)
    for n, i in enumerate(picked):
        sample = scored.samples[i]
        image = cv2.cvtColor(load_rgb(sample.path, (tile, tile)), cv2.COLOR_RGB2BGR)
        norm = np.clip((scored.maps[i] - low) / max(high - low, 1e-12), 0.0, 1.0)
        heat = cv2.applyColorMap((cv2.resize(norm, (tile, tile)) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        overlay = cv2.addWeighted(image, 0.55, heat, 0.45, 0.0)
        if scored.masks[i].any():
            mask = cv2.resize(scored.masks[i].astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(overlay, contours, -1, (0, 255, 0), 1)
        r, c = divmod(n, columns)
        y, x = r * (tile + caption_h), c * tile
        sheet[y:y + tile, x:x + tile] = overlay
        verdict = "NG" if scored.scores[i] > engine.threshold else "OK"
        text = f"{sample.defect} {scored.scores[i]:.3f} {verdict}"
        colour = (0, 0, 200) if verdict == "NG" else (0, 120, 0)
        cv2.putText(sheet, text, (x + 4, y + tile + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"could not write {path}")
    return path


def run_eval_cli(args: argparse.Namespace, settings: Any) -> int:
    report, scored, engine = evaluate(
        args.model, args.data, batch=args.batch, onnx_file=getattr(args, "onnx_file", None) or ONNX_FILE,
        threads=getattr(args, "threads", 0) or 0,
    )
    table = markdown_table(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    if args.sheet:
        heatmap_sheet(scored, engine, args.sheet)
    if getattr(args, "scores", None):  # every image's score: to try other operating points without rescoring
        Path(args.scores).parent.mkdir(parents=True, exist_ok=True)
        Path(args.scores).write_text("path,defect,score\n" + "".join(
            f"{s.path},{s.defect},{v:.6g}\n" for s, v in zip(scored.samples, scored.scores)))
    print(table)
    return 0
