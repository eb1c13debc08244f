"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, section 3.2).

Picks ``k`` of ``N`` feature vectors so that the largest distance from any
vector to its nearest pick is (approximately, 2-approximation) minimal: the
picks cover the whole feature distribution, including its rare corners, which
random sampling would miss.

Memory and time bounds, because N is large (666 images x 1024 patches):

* The N x N distance matrix is never built. We keep, per vector, the squared
  distance to its nearest pick so far and which pick that is, and update
  them after each pick with ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``.
* Distances are computed on a Johnson-Lindenstrauss random projection (128
  dims by default) when the features are wider than that.
* Triangle-inequality pruning: a vector x whose nearest pick is a, at
  distance d, cannot come closer to the new pick c if ``||c - a|| >= 2 d``
  (since ``||x - c|| >= ||c - a|| - d >= d``). Only the other vectors
  ("candidates") are updated. Early on every vector is a candidate and the
  update is a chunked pass over all rows; after a few hundred picks the
  candidates are a small fraction, so the 1% coreset of 545k patches costs
  seconds instead of thousands of full passes. The result is the same as
  without pruning (up to float rounding).

numpy only, so the sampler is usable without torch and testable on tiny
hand-made examples.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

DEFAULT_PROJECTION_DIM = 128
CHUNK_ROWS = 1 << 16  # 65536 rows x 128 dims x 4 B = 32 MiB per chunk


def random_projection(features: np.ndarray, dim: int = DEFAULT_PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """Project ``N x D`` features to ``N x dim`` with a Gaussian JL matrix; identity when D <= dim."""
    n, d = features.shape
    if d <= dim:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    # Scaled so squared norms are preserved in expectation.
    matrix = (rng.standard_normal((d, dim)) / np.sqrt(dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = features[start:start + CHUNK_ROWS] @ matrix
    return out


def greedy_coreset(features: np.ndarray, k: int, *, projection_dim: int | None = DEFAULT_PROJECTION_DIM,
                   seed: int = 0, start_index: int | None = None, progress: bool = True) -> np.ndarray:
    """Indices (length ``k``, in pick order) of a greedy k-center coreset of ``features`` (N x D).

    ``start_index`` fixes the first pick (the paper starts at a random one,
    drawn from ``seed``). ``projection_dim=None`` uses the raw features.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {features.shape}")
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"coreset size k={k} must be in [1, {n}]")
    x = random_projection(features, projection_dim, seed) if projection_dim else \
        np.ascontiguousarray(features, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x, x)
    min_sq = np.full(n, np.inf, dtype=np.float32)  # squared distance to the nearest pick so far
    nearest = np.zeros(n, dtype=np.int32)  # which pick (position in `chosen`) that is
    chosen = np.empty(k, dtype=np.int64)
    current = int(np.random.default_rng(seed).integers(n)) if start_index is None else int(start_index)
    for i in tqdm(range(k), desc="coreset", unit="pick", disable=not progress, mininterval=1.0):
        chosen[i] = current
        centre = x[current]
        centre_sq = float(centre @ centre)
        # Squared distances from the new pick to the earlier ones (i + 1 values, cheap).
        pick_sq = np.maximum(sq_norms[chosen[:i + 1]] - 2.0 * (x[chosen[:i + 1]] @ centre) + centre_sq, 0.0)
        # Candidates: ||c - a||^2 < 4 d^2, i.e. the new pick may be closer than the current nearest one.
        candidate = pick_sq[nearest] < 4.0 * min_sq
        n_candidates = int(np.count_nonzero(candidate))
        if n_candidates > n // 4:
            # Most rows change: a contiguous chunked pass beats gathering scattered rows.
            for start in range(0, n, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, n)
                dist = x[start:stop] @ centre
                dist *= -2.0
                dist += sq_norms[start:stop]
                dist += centre_sq
                closer = dist < min_sq[start:stop]
                min_sq[start:stop][closer] = dist[closer]
                nearest[start:stop][closer] = i
        elif n_candidates:
            rows = np.flatnonzero(candidate)
            dist = sq_norms[rows] - 2.0 * (x[rows] @ centre) + centre_sq
            closer = dist < min_sq[rows]
            min_sq[rows[closer]] = dist[closer]
            nearest[rows[closer]] = i
        # Rounding can leave a picked point at a tiny positive distance; never pick it twice.
        min_sq[current] = 0.0
        nearest[current] = i
        np.maximum(min_sq, 0.0, out=min_sq)
        current = int(np.argmax(min_sq))
    return chosen


def coreset_size(n: int, ratio: float) -> int:
    """Number of picks for a sampling ratio, at least 1."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, int(round(n * ratio))))
