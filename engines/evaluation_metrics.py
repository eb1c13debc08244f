"""Evaluation metrics of anomaly detection (``lineguard eval``, the benchmarks); numpy + scipy only.

* :func:`auroc` - area under the ROC curve (image- or pixel-level), exact,
  via the Mann-Whitney rank statistic (ties count one half).
* :func:`f1_max` - the best F1 over all thresholds (image-level).
* :func:`pro_auc` - MVTec's per-region overlap: for each threshold, the mean
  over connected defect regions of the fraction of the region detected,
  integrated against the pixel false-positive rate up to ``max_fpr`` (0.3)
  and divided by ``max_fpr`` so a perfect model scores 1. Unlike pixel
  AUROC, small defects weigh as much as large ones.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from .thresholds import f1_optimal


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` against boolean ``labels`` (True = anomalous); None if one class is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Probability that a random positive outscores a random negative = (rank sum - min rank sum) / (n_pos n_neg).
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Best F1 of ``score > threshold``; None if one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return None
    return f1_optimal(np.asarray(scores), labels)[1]


def _interp_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max]; x ascending, curve cut (interpolated) at x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs.size == 0 or xs[-1] < x_max:
        y_end = float(np.interp(x_max, x, y))
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_end]
    return float(np.trapezoid(ys, xs))


def pro_curve(maps: np.ndarray, masks: np.ndarray, num_thresholds: int = 1000,
              max_fpr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) arrays, fpr ascending from 0 to at least ``max_fpr``.

    ``maps`` float N x H x W, ``masks`` bool N x H x W. The thresholds are
    quantiles of the normal pixels' scores, so the FPR axis is sampled evenly
    over [0, max_fpr] whatever the score scale. Vectorised: every pixel is
    bucketed once (searchsorted) and the counts per (region, bucket) come from
    a single bincount; cumulative sums then give each region's overlap at
    every threshold.
    """
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    normal = maps[~masks]
    if normal.size == 0:
        raise ValueError("PRO needs some normal pixels")
    # Label connected regions per image (8-connectivity); the labels continue across images.
    regions = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)
    for i in range(len(masks)):
        labelled, count = ndimage.label(masks[i], structure=structure)
        regions[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += count
    if n_regions == 0:
        raise ValueError("PRO needs at least one defect region")

    # Thresholds descending in FPR order: t_0 > t_1 > ... (fpr_j ~= j / (T-1) * max_fpr).
    fpr_grid = np.linspace(0.0, max_fpr, num_thresholds)
    thresholds = np.quantile(normal, 1.0 - fpr_grid)  # descending
    ascending = thresholds[::-1]
    # bucket b = number of ascending thresholds strictly below the score: score > t_j  <=>  bucket > T-1-j.
    buckets = np.searchsorted(ascending, maps.ravel(), side="left")
    flat_regions = regions.ravel()
    nb = num_thresholds + 1
    counts = np.bincount(flat_regions * nb + buckets, minlength=(n_regions + 1) * nb).reshape(n_regions + 1, nb)
    # above[r, m] = pixels of region r with bucket >= m; threshold j needs bucket >= T - j.
    above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    idx = num_thresholds - np.arange(num_thresholds)
    above_t = above[:, idx]  # (regions + 1) x T; row 0 = normal pixels
    fpr = above_t[0] / normal.size
    region_sizes = counts[1:].sum(axis=1, keepdims=True)
    pro = (above_t[1:] / region_sizes).mean(axis=0)
    # Close the curve so it spans [0, max_fpr] even when scores tie heavily.
    order = np.argsort(fpr, kind="stable")
    return fpr[order], pro[order]


def pro_auc(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 1000) -> float | None:
    """Normalised area under the PRO curve up to ``max_fpr``; None without defect regions."""
    masks = np.asarray(masks, dtype=bool)
    if not masks.any() or masks.all():
        return None
    fpr, pro = pro_curve(maps, masks, num_thresholds=num_thresholds, max_fpr=max_fpr)
    if fpr[0] > 0.0:  # start the curve at the origin: an infinite threshold detects nothing
        fpr, pro = np.r_[0.0, fpr], np.r_[0.0, pro]
    return _interp_area(fpr, pro, max_fpr) / max_fpr
