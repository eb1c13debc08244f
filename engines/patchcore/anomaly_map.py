"""From patch scores to a pixel anomaly map: nearest upsampling, then a Gaussian blur (sigma 4, as PatchCore).

Nearest, not bilinear, as the PatchCore reference and anomalib do: the sigma-4 blur already smooths the
patch edges, and on hazelnut_toy bilinear measured 0.0003 lower pixel AUROC (0.9889 against 0.9892).

Both steps are linear and separable, so per axis they compose into one small matrix (output pixels x
patch cells), and the whole map is ``rows @ patch_scores @ cols``: two small matrix products instead
of a 32 x 32 -> 256 x 256 upsample followed by two 33-tap convolutions over 65 536 pixels. Measured on
the 2-core CPU, the convolutions were 9% of the PatchCore graph's time at batch 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at 4 sigma (kernel size 2 * int(4 sigma + 0.5) + 1: 33 for sigma 4)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def upsample_blur_matrix(n_cells: int, n_pixels: int, sigma: float) -> torch.Tensor:
    """``n_pixels x n_cells``: nearest upsampling then the Gaussian blur (reflect padding), along one axis.

    Built by pushing each basis vector through the two operations themselves, so it is them by construction.
    """
    kernel = gaussian_kernel_1d(sigma)
    radius = (kernel.numel() - 1) // 2
    if radius >= n_pixels:
        raise ValueError(f"the blur radius {radius} needs an output of more than {radius} pixels, not {n_pixels}")
    basis = torch.eye(n_cells, dtype=torch.float64).unsqueeze(1)  # n_cells signals of length n_cells
    upsampled = F.interpolate(basis, size=n_pixels, mode="nearest")
    blurred = F.conv1d(F.pad(upsampled, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
    return blurred.squeeze(1).T.to(torch.float32).contiguous()


class AnomalyMapGenerator(nn.Module):
    """``patch_scores`` N x 1 x h x w (the patch grid) -> anomaly map N x 1 x H x W at the input size."""

    def __init__(self, grid_size: tuple[int, int], input_size: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        rows = upsample_blur_matrix(self.grid_size[0], self.input_size[0], sigma)  # H x h
        cols = upsample_blur_matrix(self.grid_size[1], self.input_size[1], sigma).T.contiguous()  # w x W
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        return self.rows @ patch_scores @ self.cols
