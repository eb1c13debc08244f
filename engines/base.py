"""The contract every engine keeps, scikit-learn style: fit / score / save / load.

* ``fit(images)`` learns from normal ``uint8 H x W x 3`` images only.
* ``score(images) -> (scores[N], anomaly_maps[N, 1, h, w])`` in the training
  framework (numpy or torch): the reference the exported graph must match.
* ``export_onnx(path)`` writes a graph with input ``image`` (float32
  ``N x 3 x h x w``, dynamic N, normalised as the manifest says) and outputs
  ``score`` (N) and ``anomaly_map`` (N x 1 x h x w).
* ``save(model_dir, ...)`` = export + calibrated manifest; ``load(model_dir)``
  returns the ONNX Runtime :class:`~lineguard.engines.runtime.ScoringEngine`.
"""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .manifest import ONNX_FILE, InputSpec, Manifest, Thresholds
from .runtime import ScoringEngine, preprocess
from .thresholds import DEFAULT_CONFIDENCE, f1_optimal, normal_quantile_bound

log = logging.getLogger(__name__)


def calibrate(normal_scores: np.ndarray, defect_scores: np.ndarray | None = None,
              target_false_reject_rate: float = 0.01,
              confidence: float = DEFAULT_CONFIDENCE) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds from normal validation scores (and labelled defects when there are some).

    The normal quantile is the upper ``confidence`` bound of the ``1 - target`` quantile
    (:func:`~lineguard.engines.thresholds.normal_quantile_bound`); with fewer normal scores than the
    bound needs, a warning, and the manifest's calibration records how short it fell.
    """
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    bound = normal_quantile_bound(normal_scores, target_false_reject_rate, confidence)
    quantile = bound.value
    if not bound.sufficient:
        log.warning("only %d normal images to calibrate on: %d are needed to keep the false-reject rate at or "
                    "below %.2g%% with %.0f%% confidence (these give %.0f%%); the threshold is their maximum "
                    "plus a margin: give more normal images", bound.n, bound.min_count,
                    100 * target_false_reject_rate, 100 * confidence, 100 * bound.achieved_confidence)
    thresholds = Thresholds(
        value=quantile, method="normal_quantile", normal_quantile=quantile,
        target_false_reject_rate=target_false_reject_rate, confidence=confidence,
    )
    if defect_scores is not None and len(defect_scores):
        # Labelled defects (lineguard train --defects): the threshold that best separates them from the normals.
        scores = np.r_[normal_scores, defect_scores]
        labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(defect_scores))]
        thresholds.f1_optimal, _ = f1_optimal(scores, labels)
        thresholds.value, thresholds.method = thresholds.f1_optimal, "f1_optimal"
    stats = {
        "n_normal": int(normal_scores.size),
        # How the normal quantile was set: the order statistic used and the confidence it carries.
        "quantile_rule": {"method": "binomial_upper_bound", "rank": bound.rank, "confidence": confidence,
                          "achieved_confidence": round(bound.achieved_confidence, 4),
                          "min_normal_count": bound.min_count, "sufficient": bound.sufficient},
        "normal_mean": float(normal_scores.mean()),
        "normal_std": float(normal_scores.std()),
        "normal_quantiles": {str(q): float(np.quantile(normal_scores, q)) for q in (0.5, 0.9, 0.99, 1.0)},
        # A histogram of normal scores: the reference a drift monitor compares live scores with.
        "normal_histogram": np.histogram(normal_scores, bins=10)[0].tolist(),
        "normal_histogram_edges": np.histogram(normal_scores, bins=10)[1].tolist(),
    }
    return thresholds, stats


class AnomalyModel(ABC):
    kind: str = "abstract"

    def __init__(self, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.input = InputSpec(height=input_size[0], width=input_size[1], mean=list(mean), std=list(std))

    def input_manifest(self) -> Manifest:
        """A manifest holding only this model's input spec: all :func:`preprocess` reads."""
        return Manifest(kind=self.kind, name="", version="", input=self.input, thresholds=Thresholds(0.0, ""))

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images -> the float32 ``N x 3 x h x w`` tensor the exported graph takes, as production makes it."""
        return preprocess(list(images), self.input_manifest())

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray]) -> "AnomalyModel": ...

    @abstractmethod
    def score(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def export_onnx(self, path: Path) -> None: ...

    def save(self, model_dir: str | Path, *, name: str, version: str, thresholds: Thresholds,
             calibration: dict[str, Any], map_display_range: tuple[float, float],
             training: dict[str, Any], backbone: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None, onnx_source: str | Path | None = None,
             regions: dict[str, Any] | None = None) -> Path:
        """``onnx_source``: a graph this model already exported (saves exporting twice)."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        # Graph first, manifest last: the manifest is what processors watch for changes.
        tmp = model_dir / (ONNX_FILE + ".tmp")
        if onnx_source is not None:
            shutil.copyfile(onnx_source, tmp)
        else:
            self.export_onnx(tmp)
        tmp.replace(model_dir / ONNX_FILE)
        manifest = Manifest(
            kind=self.kind, name=name, version=version, input=self.input, thresholds=thresholds,
            map_display_range=map_display_range, backbone=backbone, training=training,
            calibration=calibration, extra=extra or {}, regions=regions,
        )
        return manifest.save(model_dir)

    @staticmethod
    def load(model_dir: str | Path, **kwargs: Any) -> ScoringEngine:
        return ScoringEngine(model_dir, **kwargs)
