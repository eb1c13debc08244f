"""The SimpleNet network (Liu et al., "SimpleNet: A Simple Network for Image Anomaly Detection and
Localization", CVPR 2023), with the frozen backbone, layers and patch features of PatchCore.

Pure torch; ``forward`` is exactly what is exported to ONNX:

    image -> backbone layers -> 3x3 average pool (local neighbourhood)
          -> upsample to the first layer's grid, concatenate
          -> (optional) average-pool channels to target_dim             (patch features, N x D x h x w)
          -> feature adaptor: one bias-free fully connected layer      (a 1x1 convolution, D -> D)
          -> discriminator: FC -> BatchNorm -> LeakyReLU(0.2) -> FC    (1x1 convolutions, D -> hidden -> 1)
          -> patch scores = -discriminator output
          -> nearest upsampling + Gaussian blur (sigma 4), as PatchCore's map  (anomaly map)
          -> image score = max of the map

The adaptor and the discriminator are per-patch (1x1) layers: trained on cached patch features as
``B x D`` rows (:meth:`SimpleNetModel.adapt_flat`, :meth:`Discriminator.forward_flat`: the same weights
as matrices), they run on the whole ``N x D x h x w`` grid once exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.backbones import FeatureExtractor
from ..patchcore.anomaly_map import AnomalyMapGenerator
from ..patchcore.torch_model import channel_pool_matrix


class Discriminator(nn.Module):
    """The paper's discriminator: a 2-layer MLP per patch, high output = normal."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.LeakyReLU(0.2))
        self.tail = nn.Conv2d(hidden_dim, 1, 1, bias=False)
        for m in self.modules():  # as the authors' code: Xavier-normal weights
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x))

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """The same layers on ``B x D`` patches (training on cached features): plain matrix products, 2-3x
        faster on CPU than 1x1 convolutions over ``B x D x 1 x 1``, and the BatchNorm statistics update alike."""
        conv, bn, act = self.body
        h = F.linear(x, conv.weight.flatten(1), conv.bias)
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=self.training,
                         momentum=bn.momentum, eps=bn.eps)
        return F.linear(act(h), self.tail.weight.flatten(1)).squeeze(1)


class SimpleNetModel(nn.Module):
    def __init__(self, backbone: nn.Module, layers: list[str], input_size: tuple[int, int],
                 target_dim: int | None = None, hidden_dim: int = 256, sigma: float = 4.0) -> None:
        super().__init__()
        self.layers = list(layers)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.feature_extractor = FeatureExtractor(backbone, self.layers)
        for p in self.feature_extractor.parameters():
            p.requires_grad_(False)
        self.feature_pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        with torch.no_grad():
            feats = self.feature_extractor(torch.zeros(1, 3, *self.input_size))
        self.feature_dim = sum(int(f.shape[1]) for f in feats.values())
        self.grid_size = tuple(int(s) for s in feats[self.layers[0]].shape[-2:])
        self.embedding_dim = min(target_dim or self.feature_dim, self.feature_dim)
        pool = channel_pool_matrix(self.feature_dim, self.embedding_dim).T[:, :, None, None].contiguous() \
            if self.embedding_dim < self.feature_dim else None
        self.register_buffer("channel_pool", pool)  # D_out x D_in x 1 x 1: a fixed 1x1 convolution
        self.hidden_dim = int(hidden_dim)
        self.adaptor = nn.Conv2d(self.embedding_dim, self.embedding_dim, 1, bias=False)
        nn.init.xavier_normal_(self.adaptor.weight)
        self.discriminator = Discriminator(self.embedding_dim, self.hidden_dim)
        self.anomaly_map_generator = AnomalyMapGenerator(self.grid_size, self.input_size, sigma)

    def train(self, mode: bool = True) -> "SimpleNetModel":
        super().train(mode)
        self.feature_extractor.eval()  # frozen: its BatchNorm statistics never move
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``N x D x h x w`` on the first layer's grid (PatchCore's, before its flattening)."""
        feats = self.feature_extractor(images)
        maps = []
        for layer in self.layers:
            f = self.feature_pooler(feats[layer])
            if tuple(f.shape[-2:]) != self.grid_size:
                f = F.interpolate(f, size=self.grid_size, mode="bilinear", align_corners=False)
            maps.append(f)
        emb = torch.cat(maps, dim=1)
        if self.channel_pool is not None:
            emb = F.conv2d(emb, self.channel_pool)
        return emb

    def patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Patch features ``N x D x h x w`` -> anomaly scores ``N x 1 x h x w``."""
        return -self.discriminator(self.adaptor(emb))

    def adapt_flat(self, x: torch.Tensor) -> torch.Tensor:
        """The adaptor on ``B x D`` patch features (training)."""
        return F.linear(x, self.adaptor.weight.flatten(1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` N x 3 x H x W (normalised) -> (``score`` N, ``anomaly_map`` N x 1 x H x W)."""
        anomaly_map = self.anomaly_map_generator(self.patch_scores(self.embed(images)))
        return anomaly_map.flatten(1).amax(dim=1), anomaly_map
