"""From the two raw EfficientAD maps to one calibrated anomaly map.

The student-teacher map (local, "structural" anomalies) and the
student-autoencoder map (global, "logical" anomalies) live on different
scales. Each is normalised on normal validation images so that its 0.9
quantile maps to 0 and its 0.995 quantile to 0.1 (the paper's q_a, q_b); then
they are averaged. A normal pixel thus sits near 0 and only a pixel above
what 0.5% of normal pixels reach goes past 0.05 in the combined map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Q_A = 0.9    # mapped to 0
Q_B = 0.995  # mapped to 0.1


def map_quantiles(maps: torch.Tensor, q_a: float = Q_A, q_b: float = Q_B) -> torch.Tensor:
    """``[q_a-quantile, q_b-quantile]`` of every pixel of ``maps`` (normal validation images)."""
    values = maps.detach().flatten().double()
    if values.numel() > 16_000_000:  # torch.quantile's input limit: subsample evenly
        values = values[:: values.numel() // 16_000_000 + 1]
    qs = torch.quantile(values, torch.tensor([q_a, q_b], dtype=torch.float64))
    if qs[1] <= qs[0]:  # a flat map (degenerate data): keep the scale finite
        qs[1] = qs[0] + 1e-6
    return qs.float()


def normalise_map(raw: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Affine map sending ``quantiles[0]`` to 0 and ``quantiles[1]`` to 0.1."""
    return 0.1 * (raw - quantiles[0]) / (quantiles[1] - quantiles[0])


def combine_maps(map_st: torch.Tensor, map_ae: torch.Tensor,
                 quantiles_st: torch.Tensor, quantiles_ae: torch.Tensor) -> torch.Tensor:
    """The paper's equal-weight average of the two normalised maps."""
    return 0.5 * normalise_map(map_st, quantiles_st) + 0.5 * normalise_map(map_ae, quantiles_ae)


def upsample_map(anomaly_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PDN grid (stride 4, 33 px receptive field) -> input resolution.

    The unpadded PDN's output is ``size/4 - 8`` wide: output pixel j describes
    input patch [4j, 4j + 33), centred at 4j + 16. Padding the grid with 4 zeros
    (0 is the normalised "q_a" level, i.e. normal) on each side makes it
    ``size/4`` wide with pixel j + 4 centred near 4(j + 4) + 2, which a plain
    4x bilinear upsample then puts on the input pixels it describes.
    """
    h, w = anomaly_map.shape[-2:]
    pad_y, pad_x = (size[0] // 4 - h) // 2, (size[1] // 4 - w) // 2
    if pad_y > 0 or pad_x > 0:
        anomaly_map = F.pad(anomaly_map, (pad_x, pad_x, pad_y, pad_y))
    return F.interpolate(anomaly_map, size=size, mode="bilinear", align_corners=False)
