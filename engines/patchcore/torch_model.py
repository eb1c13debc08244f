"""The PatchCore network (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Pure torch, no training loop: ``embed`` turns images into locally aware
patch features; ``forward`` scores them against the memory bank (filled by
``train.py``) and is exactly what is exported to ONNX, so the exported graph
and the torch reference are the same computation:

    image -> backbone layers -> 3x3 average pool (local neighbourhood)
          -> upsample to the first layer's grid, concatenate
          -> average-pool channels to target_dim           (patch features, N x HW x D)
          -> squared distances to the bank as ||a||^2 - 2ab + ||b||^2 (one Gemm)
          -> nearest bank entry per patch (TopK 1)           (patch scores)
          -> image score: max patch score, re-weighted by how isolated its nearest bank entry is
          -> patch scores upsampled + Gaussian-blurred       (anomaly map)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.backbones import FeatureExtractor
from .anomaly_map import AnomalyMapGenerator


def channel_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """``in_dim x out_dim`` matrix equal to adaptive average pooling over channels (same bins as
    ``F.adaptive_avg_pool1d``), applied as a matmul so it exports to a single MatMul."""
    matrix = torch.zeros(in_dim, out_dim)
    for j in range(out_dim):
        start = (j * in_dim) // out_dim
        stop = -((-(j + 1) * in_dim) // out_dim)  # ceil
        matrix[start:stop, j] = 1.0 / (stop - start)
    return matrix


class PatchcoreModel(nn.Module):
    def __init__(self, backbone: nn.Module, layers: list[str], input_size: tuple[int, int],
                 target_dim: int | None = None, num_neighbors: int = 9, sigma: float = 4.0) -> None:
        super().__init__()
        self.layers = list(layers)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_neighbors = num_neighbors
        self.feature_extractor = FeatureExtractor(backbone, self.layers)
        # Local neighbourhood aggregation: each patch feature also sees its 3x3 neighbours
        # (the paper's patch size 3), which makes it robust to small misalignments.
        self.feature_pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)

        with torch.no_grad():
            feats = self.feature_extractor(torch.zeros(1, 3, *self.input_size))
        self.layer_channels = {name: int(f.shape[1]) for name, f in feats.items()}  # recorded in the manifest
        self.feature_dim = sum(int(f.shape[1]) for f in feats.values())
        self.grid_size = tuple(int(s) for s in feats[self.layers[0]].shape[-2:])
        self.anomaly_map_generator = AnomalyMapGenerator(self.grid_size, self.input_size, sigma)
        self.embedding_dim = min(target_dim or self.feature_dim, self.feature_dim)
        pool = channel_pool_matrix(self.feature_dim, self.embedding_dim) \
            if self.embedding_dim < self.feature_dim else None
        self.register_buffer("channel_pool", pool)
        # Filled by fit(): the coreset (M x D), its squared norms, and for each entry the indices of its
        # num_neighbors nearest entries (itself first), used to re-weight the image score.
        self.register_buffer("memory_bank", torch.zeros(0, self.embedding_dim))
        self.register_buffer("bank_neg2_t", torch.zeros(self.embedding_dim, 0))  # -2 * bank^T, for one Gemm
        self.register_buffer("bank_sq_norms", torch.zeros(0))
        self.register_buffer("bank_neighbors", torch.zeros(0, num_neighbors, dtype=torch.long))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``N x HW x D`` on the first layer's grid (HW = grid h * grid w)."""
        feats = self.feature_extractor(images)
        maps = []
        for layer in self.layers:
            f = self.feature_pooler(feats[layer])
            if tuple(f.shape[-2:]) != self.grid_size:
                f = F.interpolate(f, size=self.grid_size, mode="bilinear", align_corners=False)
            maps.append(f)
        emb = torch.cat(maps, dim=1).flatten(2).transpose(1, 2)  # N x HW x C
        if self.channel_pool is not None:
            emb = emb @ self.channel_pool
        return emb

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Install the coreset and precompute what scoring needs from it alone."""
        bank = bank.to(torch.float32).contiguous()
        k = min(self.num_neighbors, bank.shape[0])
        sq = (bank * bank).sum(dim=1)
        neighbors = torch.empty(bank.shape[0], k, dtype=torch.long)
        # Bank-to-bank nearest neighbours in row chunks: bounded memory for large banks.
        for start in range(0, bank.shape[0], 4096):
            chunk = bank[start:start + 4096]
            rows = torch.arange(start, start + chunk.shape[0])
            d = sq[rows, None] - 2.0 * chunk @ bank.T + sq[None, :]
            d[rows - start, rows] = -1.0  # each entry is its own nearest neighbour, whatever the rounding
            neighbors[start:start + chunk.shape[0]] = torch.topk(d, k, dim=1, largest=False).indices
        self.memory_bank = bank
        self.bank_neg2_t = (-2.0 * bank).T.contiguous()  # scaling by -2 is exact in float
        self.bank_sq_norms = sq
        self.bank_neighbors = neighbors

    def nearest_neighbors(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance, index) of each patch's nearest bank entry; ``emb`` is N x HW x D, results N x HW.

        ``min_b ||a - b||^2 = ||a||^2 + min_b (||b||^2 - 2 a.b)``: the bracket for every (patch, entry)
        pair is a single Gemm (``-2 bank^T`` as weights, ``||b||^2`` as bias), the only pass over the
        large patches x bank matrix besides the minimum; ``||a||^2`` is added after the minimum, per patch.
        """
        hw, dim = self.grid_size[0] * self.grid_size[1], self.embedding_dim
        flat = emb.reshape(-1, dim)
        partial = torch.addmm(self.bank_sq_norms, flat, self.bank_neg2_t)  # (N HW) x M
        part_min, index = torch.topk(partial, 1, dim=1, largest=False)
        min_sq = part_min.squeeze(1) + (flat * flat).sum(dim=1)
        return min_sq.clamp_min(0.0).sqrt().reshape(-1, hw), index.reshape(-1, hw)

    def image_score(self, patch_scores: torch.Tensor, locations: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The paper's eq. 7: ``s = (1 - exp||m_test - m*|| / sum_{m in N_b(m*)} exp||m_test - m||) * s*``.

        s* is the largest patch score, m_test that patch's feature, m* its nearest bank entry and
        N_b(m*) the b nearest bank entries of m* (m* included). If m* is itself a rare normal
        feature, far from its bank neighbours, the fraction is small and s* is kept almost whole;
        if m* sits in a dense region, the weight falls towards 1 - 1/b. The neighbour table is
        precomputed in :meth:`set_memory_bank`, so this costs one gather per image.
        """
        max_patch = patch_scores.argmax(dim=1, keepdim=True)  # N x 1
        score = torch.gather(patch_scores, 1, max_patch).squeeze(1)  # s*, N
        if self.num_neighbors <= 1 or self.memory_bank.shape[0] <= 1:
            return score
        dim = emb.shape[2]
        test_feature = torch.gather(emb, 1, max_patch.unsqueeze(2).expand(-1, 1, dim))  # N x 1 x D
        nearest = torch.gather(locations, 1, max_patch).squeeze(1)  # index of m*, N
        support = self.bank_neighbors[nearest]  # N x b, m* first
        support_features = self.memory_bank[support]  # N x b x D
        distances = (test_feature - support_features).pow(2).sum(dim=2).clamp_min(0.0).sqrt()  # N x b
        weights = 1.0 - torch.softmax(distances, dim=1)[:, 0]
        return weights * score

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` N x 3 x H x W (normalised) -> (``score`` N, ``anomaly_map`` N x 1 x H x W)."""
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("empty memory bank: fit the model first")
        emb = self.embed(images)
        patch_scores, locations = self.nearest_neighbors(emb)  # N x HW each
        score = self.image_score(patch_scores, locations, emb)
        h, w = self.grid_size
        anomaly_map = self.anomaly_map_generator(patch_scores.reshape(-1, 1, h, w))
        return score, anomaly_map
