"""Decision thresholds from scores: normal-only quantiles, or F1-optimal with labelled defects."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# The confidence with which a calibrated threshold keeps the false-reject rate at or below its target.
DEFAULT_CONFIDENCE = 0.9


def min_normal_count(target_false_reject_rate: float = 0.01, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest normal scores whose maximum bounds the false-reject rate at the target with ``confidence``.

    The largest of n normal scores rejects more than a fraction p of good parts with probability
    (1 - p)^n, so n >= ln(1 - confidence) / ln(1 - p): 230 for p = 1% at 90%, 45 for p = 5%.
    """
    _check(target_false_reject_rate, confidence)
    return int(math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_false_reject_rate) - 1e-9))


def _check(target: float, confidence: float) -> None:
    if not 0.0 < target < 1.0:
        raise ValueError("target_false_reject_rate must be in (0, 1)")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")


def _binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(Bin(n, q) <= j) for j = 0..n (log-space pmf, exact enough for n in the millions)."""
    j = np.arange(n + 1, dtype=np.float64)
    log_pmf = (math.lgamma(n + 1) - np.array([math.lgamma(x + 1) + math.lgamma(n - x + 1) for x in j])
               + j * math.log(q) + (n - j) * math.log1p(-q))
    return np.cumsum(np.exp(log_pmf))


@dataclass
class QuantileBound:
    """A threshold from normal scores and what it promises (see :func:`normal_quantile_bound`)."""

    value: float
    n: int  # normal scores it was set on
    rank: int | None  # 1-based order statistic used (None: too few scores, max + margin)
    confidence: float  # asked for
    achieved_confidence: float  # P(false-reject rate <= target) the rule guarantees (>= confidence when sufficient)
    min_count: int  # normal scores needed for the bound at this target and confidence

    @property
    def sufficient(self) -> bool:
        return self.rank is not None


def normal_quantile_bound(normal_scores: np.ndarray, target_false_reject_rate: float = 0.01,
                          confidence: float = DEFAULT_CONFIDENCE) -> QuantileBound:
    """The upper confidence bound of the ``1 - target`` quantile of normal scores (distribution-free).

    With the k-th smallest of n normal scores X_(k) as the threshold (``score > X_(k)`` rejects), the
    share of good parts rejected is 1 - F(X_(k)) = 1 - U_(k) with U_(k) ~ Beta(k, n - k + 1), whatever the
    score distribution F (continuous). So P(rate <= p) = P(U_(k) >= 1 - p) = P(Bin(n, 1 - p) <= k - 1), and
    the smallest k with that probability >= ``confidence`` is the least conservative threshold that keeps
    the realised false-reject rate at or below the target in that share of calibrations. Below
    :func:`min_normal_count` scores even the maximum cannot promise it: the maximum plus a tenth of the
    scores' standard deviation is returned, with the confidence the maximum achieves.
    """
    _check(target_false_reject_rate, confidence)
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    n = int(scores.size)
    if n == 0:
        raise ValueError("cannot calibrate a threshold from zero normal scores")
    need = min_normal_count(target_false_reject_rate, confidence)
    cdf = _binomial_cdf(n, 1.0 - target_false_reject_rate)  # cdf[k - 1] = P(rate of X_(k) <= p)
    ok = np.nonzero(cdf[:n] >= confidence)[0]
    if ok.size == 0:
        return QuantileBound(float(scores[-1] + 0.1 * scores.std()), n, None, confidence,
                             float(cdf[n - 1]), need)
    k = int(ok[0]) + 1
    return QuantileBound(float(scores[k - 1]), n, k, confidence, float(cdf[k - 1]), need)


def normal_quantile(normal_scores: np.ndarray, target_false_reject_rate: float = 0.01,
                    confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The score that rejects at most ``target_false_reject_rate`` of normal parts with ``confidence``:
    the value of :func:`normal_quantile_bound`."""
    return normal_quantile_bound(normal_scores, target_false_reject_rate, confidence).value


def threshold_at_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold (a normal score) that ``score > threshold`` rejects at most ``rate`` of
    ``normal_scores`` with: the empirical operating point on a labelled set."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("no normal scores")
    allowed = int(math.floor(rate * scores.size + 1e-9))
    return float(scores[scores.size - 1 - min(allowed, scores.size - 1)])


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
