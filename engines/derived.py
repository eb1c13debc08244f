"""Graphs derived from a model's FP32 ``model.onnx`` (INT8 ``model.int8.onnx``, FP16 ``model.fp16.onnx``):
the calibration and parity code both exports share.

A derived graph scores on a slightly different scale than the FP32 graph the manifest's threshold was
calibrated on. :func:`calibrate_derived` scores the same normal images with both graphs and rescales the
threshold by the median derived/FP32 ratio; :func:`compare_on_test_set` scores a labelled MVTec test set
with both and counts the verdicts that differ. :func:`record` stores it all in the manifest's extra under the
precision's name, where :class:`ScoringEngine` finds the threshold when it loads the derived file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .data import load_rgb, normal_images, test_samples
from .manifest import ONNX_FILE, Manifest, sha256_file
from .runtime import ScoringEngine, preprocess

log = logging.getLogger(__name__)


def pick_calibration_images(data: str | Path, count: int) -> list[Path]:
    """``count`` normal images spread evenly over the sorted list (deterministic)."""
    paths = normal_images(data)
    if len(paths) <= count:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def calibration_source(manifest: Manifest, data: str | Path | None) -> str | Path:
    """``data``, else the images the model was trained on; a clear error when neither is known."""
    data = data or manifest.training.get("data")
    if not data:
        raise ValueError("no calibration images: pass --data (a folder of normal images or an MVTec root)")
    return data


def score_graph(path: Path, tensor: np.ndarray, input_name: str, batch: int = 8) -> np.ndarray:
    """Image scores of a preprocessed batch through one graph, on the CPU provider (the reference run)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["score"], {input_name: tensor[i:i + batch]})[0].reshape(-1)
                           for i in range(0, len(tensor), batch)]).astype(np.float64)


def relative_error(derived: np.ndarray, fp32: np.ndarray) -> np.ndarray:
    return (derived - fp32) / np.maximum(np.abs(fp32), 1e-12)


def calibrate_derived(model_dir: Path, manifest: Manifest, derived_file: str, paths: list[Path],
                      input_name: str) -> dict[str, Any]:
    """Parity of ``derived_file`` against ``model.onnx`` on normal images, and the threshold rescaled for it."""
    tensor = preprocess([load_rgb(p) for p in paths], manifest)
    fp32 = score_graph(model_dir / ONNX_FILE, tensor, input_name)
    derived = score_graph(model_dir / derived_file, tensor, input_name)
    relative = relative_error(derived, fp32)
    # The threshold was calibrated on FP32 scores. A derived graph's scores are shifted a little (INT8's run a
    # few percent high: quantisation noise only adds distance to the memory bank), so it gets the FP32
    # threshold times the median derived/FP32 ratio on these normal images.
    scale = float(np.median(derived / np.maximum(fp32, 1e-12)))
    return {
        "file": derived_file,
        "sha256": sha256_file(model_dir / derived_file),
        "calibration_images": len(paths),
        "score_relative_diff_mean": float(relative.mean()),
        "score_relative_diff_median_abs": float(np.median(np.abs(relative))),
        "score_relative_diff_max_abs": float(np.abs(relative).max()),
        "threshold_scale": scale,
        "threshold": manifest.thresholds.value * scale,
    }


def compare_on_test_set(model_dir: Path, derived_file: str, data: str | Path,
                        batch: int = 16) -> dict[str, Any] | None:
    """FP32 against the derived graph on an MVTec test set, each with its own threshold, exactly as production
    scores (:class:`ScoringEngine`, CPU provider); None when ``data`` has no ``test/`` folder."""
    if not (Path(data) / "test").is_dir():
        return None
    samples = test_samples(data)
    fp32 = ScoringEngine(model_dir, providers=["CPUExecutionProvider"], warmup=False)
    derived = ScoringEngine(model_dir, providers=["CPUExecutionProvider"], warmup=False, onnx_file=derived_file)
    a, b = [], []
    for start in range(0, len(samples), batch):
        images = [load_rgb(s.path) for s in samples[start:start + batch]]
        a.append(fp32.score(images)[0])
        b.append(derived.score(images)[0])
    fp32_scores, derived_scores = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    relative = np.abs(relative_error(derived_scores, fp32_scores))
    # Defective is strictly above the threshold, as inspection.is_defective decides in production.
    fp32_verdicts, derived_verdicts = fp32_scores > fp32.threshold, derived_scores > derived.threshold
    labels = np.array([s.is_defective for s in samples])
    return {
        "data": str(data),
        "images": len(samples),
        "score_relative_diff_median_abs": float(np.median(relative)),
        "score_relative_diff_max_abs": float(relative.max()),
        "verdicts_differing": int((fp32_verdicts != derived_verdicts).sum()),
        "fp32_verdict_accuracy": float((fp32_verdicts == labels).mean()),
        "derived_verdict_accuracy": float((derived_verdicts == labels).mean()),
    }


def record(model_dir: Path, precision: str, info: dict[str, Any]) -> None:
    """Store ``info`` as the manifest's ``extra[precision]`` (re-read first: the manifest stays the one truth)."""
    manifest = Manifest.load(model_dir)
    manifest.extra = {**manifest.extra, precision: info}
    manifest.save(model_dir)


def describe(precision: str, info: dict[str, Any]) -> str:
    """The figures an export prints: calibration parity and threshold, then test-set parity where measured."""
    lines = [f"{precision}: {info['file']} threshold {info['threshold']:.6g} "
             f"(FP32's x {info['threshold_scale']:.4f}); on {info['calibration_images']} normal images scores differ from FP32 by median "
             f"{100 * info['score_relative_diff_median_abs']:.3f}%, max {100 * info['score_relative_diff_max_abs']:.3f}%"]
    parity = info.get("test_parity")
    if parity:
        lines.append(f"{precision}: test set {parity['data']} ({parity['images']} images): relative score error "
                     f"median {100 * parity['score_relative_diff_median_abs']:.3f}%, max "
                     f"{100 * parity['score_relative_diff_max_abs']:.3f}%; verdicts differing from FP32: "
                     f"{parity['verdicts_differing']}; verdict accuracy FP32 {parity['fp32_verdict_accuracy']:.3f}, "
                     f"{precision} {parity['derived_verdict_accuracy']:.3f}")
    return "\n".join(lines)
