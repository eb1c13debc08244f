"""EfficientAD-S networks (Batzner et al., "EfficientAD", WACV 2024): pure torch, no training logic.

* :class:`PDNSmall` - the patch description network: four convolutions and two
  average pools, no padding, so every output pixel sees exactly one 33 x 33
  input patch at stride 4 (256 px in -> 56 x 56 out).
* :class:`AutoEncoder` - the logical-anomaly branch: strided convolutions down
  to a 1 x 1 x 64 code, bilinear upsampling + convolutions back to the PDN grid.
* :class:`BackboneTeacher` - option (b) of the README: a frozen pretrained
  backbone cut at stride 4/8, resampled and cropped onto the PDN grid.
* :class:`EfficientAdModel` - teacher + student + autoencoder with the teacher
  normalisation and the map quantiles as buffers, so ``forward`` is the whole
  scoring function that is exported to ONNX.

Inputs are already normalised the way the manifest says (ImageNet mean/std),
so no network here normalises again.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .anomaly_map import combine_maps, upsample_map


def pdn_output_size(size: int) -> int:
    """Side of the PDN-S output for a ``size`` input (the sequence of ops in :class:`PDNSmall`)."""
    size = size - 3          # conv1 k4
    size = size // 2         # avgpool 2
    size = size - 3          # conv2 k4
    size = size // 2         # avgpool 2
    size = size - 2          # conv3 k3
    return size - 3          # conv4 k4


class PDNSmall(nn.Module):
    """PDN-S: 33 px receptive field, no padding (padding would let border pixels see zeros)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(3, 128, kernel_size=4)
        self.conv2 = nn.Conv2d(128, 256, kernel_size=4)
        self.conv3 = nn.Conv2d(256, 256, kernel_size=3)
        self.conv4 = nn.Conv2d(256, out_channels, kernel_size=4)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.conv4(x)


class AutoEncoder(nn.Module):
    """The paper's autoencoder, generalised from 256 px to any input side divisible by 32.

    The encoder halves the image five times and a last ``size/32`` convolution
    squeezes it to a 1 x 1 code: the bottleneck is what stops it from copying
    local detail, so it only reproduces the *arrangement* of normal parts.
    The decoder upsamples through the paper's sizes (3, 8, 15, 32, 63, 127 for
    256 px) to the PDN output grid.
    """

    def __init__(self, out_channels: int, input_size: int, output_size: int, dropout: float = 0.2) -> None:
        super().__init__()
        if input_size % 32 or input_size < 64:
            raise ValueError(f"EfficientAD needs an input side >= 64 and divisible by 32, got {input_size}")
        self.output_size = output_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, input_size // 32),
        )
        s = input_size
        # Each stage: upsample to this size, then a 4x4 conv with padding 2 adds one pixel.
        self.stage_sizes = [max(1, v) for v in (s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1)]
        self.decoder_convs = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in self.stage_sizes)
        self.dropout = nn.Dropout(dropout)
        self.final1 = nn.Conv2d(64, 64, 3, padding=1)
        self.final2 = nn.Conv2d(64, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        for size, conv in zip(self.stage_sizes, self.decoder_convs):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = self.dropout(F.relu(conv(x)))
        x = F.interpolate(x, size=(self.output_size, self.output_size), mode="bilinear", align_corners=False)
        x = F.relu(self.final1(x))
        return self.final2(x)


class BackboneTeacher(nn.Module):
    """A frozen pretrained backbone cut to a PDN-like receptive field (option (b)).

    ``extract(x)`` returns the backbone's feature maps at ``strides``; they are
    resampled to the stride-4 grid, concatenated and centre-cropped to the
    ``output_size`` of an unpadded PDN on the same input, so teacher pixel
    (i, j) and student pixel (i, j) describe the same patch.
    """

    def __init__(self, extract: nn.Module, input_size: int, output_size: int) -> None:
        super().__init__()
        self.extract = extract
        self.grid = input_size // 4
        self.offset = (self.grid - output_size) // 2
        self.output_size = output_size
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: Sequence[torch.Tensor] = self.extract(x)
        grid = (self.grid, self.grid)
        maps = [f if tuple(f.shape[-2:]) == grid else
                F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in feats]
        out = torch.cat(maps, dim=1)
        o, n = self.offset, self.output_size
        return out[:, :, o:o + n, o:o + n]


class EfficientAdModel(nn.Module):
    """Teacher, student (2C channels), autoencoder, plus the constants the scorer needs.

    Buffers: ``teacher_mean``/``teacher_std`` (per channel, over training images)
    and the 0.9/0.995 quantiles of the student-teacher and autoencoder maps on
    normal validation images. ``forward`` returns ``(score[N], map[N,1,H,W])``.
    """

    def __init__(self, teacher: nn.Module, channels: int, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.channels = channels
        self.output_size = pdn_output_size(input_size)
        self.teacher = teacher
        self.student = PDNSmall(2 * channels)
        self.autoencoder = AutoEncoder(channels, input_size, self.output_size)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("teacher_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, channels, 1, 1))
        # [q_a, q_b] per map; defaults make normalisation the identity times 0.1 until calibrated.
        self.register_buffer("quantiles_st", torch.tensor([0.0, 1.0]))
        self.register_buffer("quantiles_ae", torch.tensor([0.0, 1.0]))

    def train(self, mode: bool = True) -> "EfficientAdModel":
        super().train(mode)
        self.teacher.eval()  # frozen: its batch-norm statistics must never move
        return self

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised (student-teacher, student-autoencoder) maps on the PDN grid, N x 1 x h x w."""
        c = self.channels
        teacher = self.teacher_features(x)
        student = self.student(x)
        ae = self.autoencoder(x)
        map_st = (teacher - student[:, :c]).pow(2).mean(dim=1, keepdim=True)
        map_ae = (ae - student[:, c:]).pow(2).mean(dim=1, keepdim=True)
        return map_st, map_ae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        map_st, map_ae = self.raw_maps(x)
        combined = combine_maps(map_st, map_ae, self.quantiles_st, self.quantiles_ae)
        full = upsample_map(combined, (x.shape[-2], x.shape[-1]))
        score = full.flatten(1).amax(dim=1)
        return score, full


def count_conv_flops(module: nn.Module, input_size: int, run: Callable[[torch.Tensor], object] | None = None) -> int:
    """FLOPs (2 x multiply-accumulates) of every Conv2d/Linear in one forward of one image.

    Counted with forward hooks from the actual output shapes, so it follows
    whatever the modules really compute (teacher backbones included).
    Element-wise ops, pooling and resizes are left out: they are <1% here.
    """
    total = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            total += 2 * per_out * output.numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, input_size, input_size)
            (run or module)(x)
    finally:
        for h in handles:
            h.remove()
    return total
