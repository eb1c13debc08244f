"""The DRAEM model class: fit (training in :mod:`.train`), scoring, ONNX export.

``build_model(**options)`` is what ``lineguard train --model draem`` calls (see
:data:`lineguard.engines.training.MODEL_FACTORIES`). Options (all ``--option key=value``):

=================  ==========  ======================================================================
option             default     meaning
=================  ==========  ======================================================================
input_size         (128, 128)  side divisible by 32 (``--size``); 128 keeps CPU training in minutes
recon_width        8           reconstructive network's base width (paper: 128)
disc_width         8           discriminative U-Net's base width (paper: 64)
smooth_kernel      auto        mean filter over the anomaly map (odd); auto: the paper's 21 px at 256 px,
                               scaled with the input (11 at 128); 1: none
steps              1000        optimiser steps (paper: 700 epochs of its data set)
batch_size         4           images per step (paper: 8)
lr                 1e-3        Adam (paper: 1e-4 for its wide networks); x0.2 at 80% and 90% of steps
texture            mixed       what fills a synthetic anomaly: procedural, self or mixed (see train.py)
beta_max           0.8         blend opacity beta ~ U(0, beta_max) (the paper's)
anomaly_prob       0.5         share of training images given a synthetic anomaly (the paper's)
threads            0           torch intra-op threads (0: torch's default)
progress           true        tqdm bar
seed               0
=================  ==========  ======================================================================

Training runs on the GPU when torch sees one (same code path); the model comes back on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..base import AnomalyModel
from ..common.onnx_export import export_graph
from .torch_model import DIVISOR, DraemModel
from .train import DraemTrainer


class Draem(AnomalyModel):
    kind = "draem"

    def __init__(self, input_size: Sequence[int] | int = (128, 128), seed: int = 0,
                 smooth_kernel: int | None = None, **training: Any) -> None:
        """``training``: the options of :class:`DraemTrainer` (the table above)."""
        size = tuple(int(v) for v in (input_size if isinstance(input_size, (list, tuple)) else (input_size,) * 2))
        if len(size) != 2 or any(v % DIVISOR for v in size):
            raise ValueError(f"DRAEM needs an input size divisible by {DIVISOR}, got {size}")
        super().__init__(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the networks take pixels scaled to [0, 1]
        self.size = size
        if smooth_kernel is None:  # the paper's 21 x 21 filter at 256 px, scaled to this input (odd)
            smooth_kernel = max(1, int(round(21 * min(size) / 256)) | 1)
        self.trainer = DraemTrainer(size, seed=seed, smooth_kernel=int(smooth_kernel), **training)
        self.model: DraemModel | None = None
        self.manifest_extra: dict[str, Any] = {}

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[:2] != self.size:
            import cv2

            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def fit(self, images: Sequence[np.ndarray]) -> "Draem":
        if not len(images):
            raise ValueError("DRAEM needs at least 1 normal image")
        from ..efficientad.torch_model import count_conv_flops

        data = np.stack([self._resized(im) for im in images])
        self.model = self.trainer.train(data)
        self.manifest_extra.update({
            **self.trainer.options(), "n_train": len(images), "device": self.trainer.device,
            "train_seconds": self.trainer.train_seconds, "final_losses": self.trainer.final_losses,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "gflops_per_image": round(count_conv_flops(self.model, self.size[0]) / 1e9, 3)
            if self.size[0] == self.size[1] else None,
            "textures": "procedural and/or the training set's own images (DTD not reachable offline)",
        })
        return self

    def score_tensor(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        assert self.model is not None, "fit() first"
        self.model.eval()
        with torch.no_grad():
            scores, maps = self.model(x)
        return scores.numpy(), maps.numpy()

    def score(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.score_tensor(torch.from_numpy(self.preprocess(images)))

    def export_onnx(self, path: Path) -> None:
        assert self.model is not None, "fit() first"
        export_graph(self.model, path, ["score", "anomaly_map"], self.size[0], self.size[1])


def build_model(**options: Any) -> Draem:
    return Draem(**options)
