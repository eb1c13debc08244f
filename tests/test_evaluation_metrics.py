"""Evaluation metrics (and the coreset) against hand-computed small cases and sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.engines.common.coreset import coreset_size, greedy_coreset
from lineguard.engines.evaluation_metrics import auroc, f1_max, pro_auc, pro_curve


def test_auroc_hand_computed() -> None:
    # Pairs (pos, neg): (0.8,0.1) (0.8,0.4) (0.35,0.1) (0.35,0.4) -> 3 of 4 pairs ordered correctly.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: pairs (0.5,0.5)=0.5, (0.5,0.2)=1.
    assert auroc([0.2, 0.5, 0.5], [0, 0, 1]) == pytest.approx(0.75)
    assert auroc([0.0, 1.0], [0, 1]) == 1.0
    assert auroc([1.0, 0.0], [0, 1]) == 0.0
    assert auroc([0.3, 0.4], [1, 1]) is None


def test_f1_max_hand_computed() -> None:
    # Cut between 0.7 and 0.4: predicted {0.9, 0.8, 0.7}, tp=2 fp=1 fn=0 -> P=2/3 R=1 F1=0.8;
    # cut between 0.9 and 0.8: tp=1 fp=0 fn=1 -> F1=2/3. The best is 0.8.
    assert f1_max([0.9, 0.8, 0.7, 0.4, 0.1], [1, 0, 1, 0, 0]) == pytest.approx(0.8)
    assert f1_max([0.9, 0.1], [1, 1]) is None


def test_auroc_matches_sklearn() -> None:
    from sklearn import metrics  # a dev dependency: the reference implementation
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=500), 1)  # rounded: plenty of ties
    labels = rng.random(500) < 0.3
    scores[labels] += 0.5
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_pro_two_regions_hand_computed() -> None:
    # One 4x4 image, 16 pixels: region A (2 pixels, top-left) and region B (2 pixels, bottom-right),
    # 12 normal pixels scored 0.0 ... 0.11.
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0:2] = True  # A
    mask[0, 3, 2:4] = True  # B
    maps = np.zeros((1, 4, 4), np.float32)
    maps[~mask] = np.arange(12) / 100.0
    maps[0, 0, 0:2] = [1.0, 1.0]  # A: fully above every normal pixel
    maps[0, 3, 2:4] = [1.0, 0.005]  # B: half above every normal pixel, half at FPR rank ~11/12
    fpr, pro = pro_curve(maps, mask, num_thresholds=301, max_fpr=0.3)
    # At FPR 0 (threshold = max normal score) A is found, B half: PRO = (1 + 0.5) / 2.
    assert fpr[0] == 0.0 and pro[0] == pytest.approx(0.75)
    # B's low pixel (0.005) is above only one normal pixel, so up to FPR 0.3 PRO stays 0.75.
    assert pro_auc(maps, mask) == pytest.approx(0.75, abs=1e-6)


def test_pro_perfect_and_inverted() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 16, 16), bool)
    mask[0, 2:5, 2:5] = True
    mask[1, 10:14, 3:6] = True
    maps = rng.random(mask.shape).astype(np.float32)
    perfect = np.where(mask, 2.0, maps)
    assert pro_auc(perfect, mask) == pytest.approx(1.0)
    inverted = np.where(mask, -1.0, maps)
    assert pro_auc(inverted, mask) == pytest.approx(0.0)
    # Random maps: overlap grows like the FPR, so the normalised area is about 0.3 / 2.
    assert pro_auc(maps, mask) == pytest.approx(0.15, abs=0.05)


def test_coreset_picks_farthest_points() -> None:
    # Points on a line: 0, 1, 2, 10, 10.5. Starting at 0, greedy k-center picks 10.5 (farthest from 0),
    # then 2 (distance 2 to {0, 10.5}, larger than 1's 1 and 10's 0.5), then 1 or 10 (tie broken by index).
    points = np.array([[0.0], [1.0], [2.0], [10.0], [10.5]], dtype=np.float32)
    picks = greedy_coreset(points, 3, start_index=0, projection_dim=None, progress=False)
    assert picks.tolist() == [0, 4, 2]
    # In 2-D with a projection that must not change anything (D <= projection dim).
    square = np.array([[0, 0], [0.1, 0], [5, 5], [0, 5], [5, 0]], dtype=np.float32)
    picks = greedy_coreset(square, 2, start_index=0, progress=False)
    assert picks.tolist() == [0, 2]
    assert coreset_size(1000, 0.01) == 10 and coreset_size(5, 0.01) == 1
    with pytest.raises(ValueError):
        greedy_coreset(points, 6, progress=False)


def _brute_force_coreset(points: np.ndarray, k: int, start: int) -> list[int]:
    """The textbook algorithm with the full distance matrix: fine for a few hundred points."""
    dist = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    picks = [start]
    nearest = dist[start].copy()
    for _ in range(k - 1):
        picks.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, dist[picks[-1]])
    return picks


def test_coreset_pruning_matches_brute_force() -> None:
    # Clustered data (like CNN patch features): the triangle-inequality pruning skips most rows
    # after the first picks, and must still choose exactly what the full computation chooses.
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 4, (12, 6))
    points = (centres[rng.integers(0, 12, 400)] + rng.normal(0, 0.5, (400, 6))).astype(np.float64)
    expected = _brute_force_coreset(points, 60, start=17)
    got = greedy_coreset(points.astype(np.float32), 60, start_index=17, projection_dim=None, progress=False)
    assert got.tolist() == expected


def test_coreset_projection_keeps_coverage() -> None:
    # Two far clusters in 512-D: any good coreset of 2 has one point in each, projected or not.
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (200, 512))
    b = rng.normal(0, 0.1, (50, 512)) + 5.0
    points = np.r_[a, b].astype(np.float32)
    picks = greedy_coreset(points, 2, projection_dim=64, seed=3, progress=False)
    assert {int(p >= 200) for p in picks} == {0, 1}
