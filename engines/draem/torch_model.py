"""DRAEM's two networks (Zavrtanik et al., ICCV 2021), pure torch, exported whole to ONNX.

* :class:`ReconstructiveSubNetwork` - an encoder-decoder (no skip connections) trained to turn an image
  with a synthetic anomaly back into the clean image: 5 encoder blocks (widths 1, 2, 4, 8, 8 x ``width``,
  4 max-pools), the mirrored decoder, a 3x3 convolution to RGB.
* :class:`DiscriminativeSubNetwork` - a U-Net on the concatenation (reconstruction, input): 6 encoder
  blocks (1, 2, 4, 8, 8, 8 x ``width``, 5 max-pools), skip connections, a 2-class (normal, anomalous)
  output per pixel.
* :class:`DraemModel` - both, with the scoring head: the softmax's anomalous channel, smoothed by a
  ``smooth_kernel`` mean filter (the paper's 21 x 21), is the anomaly map; the score is its maximum.

The paper's widths are 128 (reconstructive) and 64 (discriminative): 88 M parameters and 352 GFLOP
per 256 px image (convolutions, counted on this code), far too slow to train on a CPU. Here both are
options (default 8 each: 0.68 M parameters, 2.4 GFLOP at 256 px, 0.6 at 128); the structure is the
paper's. The input is the image scaled to [0, 1] (manifest mean 0, std 1), side divisible by 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIVISOR = 32  # the discriminative U-Net pools 5 times


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with batch norm and ReLU (every block of both networks)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Bilinear x2 upsampling, then a 3x3 convolution with batch norm and ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ReconstructiveSubNetwork(nn.Module):
    def __init__(self, width: int = 16, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.encoder = nn.ModuleList([_block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w),
                                      _block(4 * w, 8 * w), _block(8 * w, 8 * w)])
        self.decoder = nn.ModuleList([
            nn.Sequential(_up(8 * w, 8 * w), _block(8 * w, 4 * w)),
            nn.Sequential(_up(4 * w, 4 * w), _block(4 * w, 2 * w)),
            nn.Sequential(_up(2 * w, 2 * w), _block(2 * w, w)),
            nn.Sequential(_up(w, w), _block(w, w)),
        ])
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
        for block in self.decoder:
            x = block(x)
        return self.out(x)


class DiscriminativeSubNetwork(nn.Module):
    def __init__(self, width: int = 16, in_channels: int = 6, out_channels: int = 2) -> None:
        super().__init__()
        w = width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList([_block(c_in, c_out) for c_in, c_out in zip([in_channels] + widths[:-1], widths)])
        # Up path: (upsample-conv to c_up, then a block on [c_up + the skip's channels] -> c_up).
        ups = [(8 * w, 8 * w), (8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)]
        skips = widths[-2::-1]  # 8w, 8w, 4w, 2w, w
        self.ups = nn.ModuleList([_up(c_in, c_up) for c_in, c_up in ups])
        self.decoder = nn.ModuleList([_block(c_up + skip, c_up) for (_, c_up), skip in zip(ups, skips)])
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for up, block, skip in zip(self.ups, self.decoder, skips[-2::-1]):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class DraemModel(nn.Module):
    """image ([0, 1], N x 3 x H x W) -> (score N, anomaly map N x 1 x H x W in [0, 1])."""

    def __init__(self, recon_width: int = 8, disc_width: int = 8, smooth_kernel: int = 11) -> None:
        super().__init__()
        if smooth_kernel < 1 or smooth_kernel % 2 == 0:
            raise ValueError(f"smooth_kernel must be odd and positive, got {smooth_kernel}")
        self.reconstructive = ReconstructiveSubNetwork(recon_width)
        self.discriminative = DiscriminativeSubNetwork(disc_width)
        self.smooth_kernel = int(smooth_kernel)

    def mask_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, 2-class logits per pixel): what training's losses read."""
        reconstruction = self.reconstructive(x)
        return reconstruction, self.discriminative(torch.cat([reconstruction, x], dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, logits = self.mask_logits(x)
        anomalous = torch.softmax(logits, dim=1)[:, 1:]
        k = self.smooth_kernel
        if k > 1:  # the paper's mean filter (zeros beyond the border count, as in its evaluation)
            anomalous = F.avg_pool2d(anomalous, k, stride=1, padding=k // 2)
        return anomalous.flatten(1).amax(dim=1), anomalous
