"""Decision thresholds from scores: normal-only quantiles, or F1-optimal with labelled defects."""

from __future__ import annotations

import numpy as np


def normal_quantile(normal_scores: np.ndarray, target_false_reject_rate: float = 0.01) -> float:
    """The score that rejects ``target_false_reject_rate`` of normal parts.

    With few calibration images the empirical quantile is coarse; a margin of
    one standard deviation of the top scores keeps the rate from being
    exceeded on the next batch of good parts.
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot calibrate a threshold from zero normal scores")
    if not 0.0 < target_false_reject_rate < 1.0:
        raise ValueError("target_false_reject_rate must be in (0, 1)")
    q = float(np.quantile(scores, 1.0 - target_false_reject_rate))
    if scores.size < 1.0 / target_false_reject_rate:
        q = float(scores.max() + 0.1 * scores.std())
    return q


def f1_optimal(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold`` against ``labels`` (1 = defective)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("F1-optimal calibration needs both normal and defective samples")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # Only cut between distinct scores.
    distinct = np.r_[s[1:] != s[:-1], True]
    best = int(np.argmax(np.where(distinct, f1, -1)))
    below = s[best + 1] if best + 1 < s.size else s[best] - 1e-6
    return float((s[best] + below) / 2.0), float(f1[best])
