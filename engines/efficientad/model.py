"""The EfficientAD-S model class: fit (training in :mod:`.train`), map calibration, scoring, ONNX export.

``build_model(**options)`` is what ``lineguard train --model efficientad``
calls (see :data:`lineguard.engines.training.MODEL_FACTORIES`). Options (all
``--option key=value``):

=================  ==========================  ===============================================
option             default                     meaning
=================  ==========================  ===============================================
input_size         (256, 256)                  square side divisible by 32 (``--size``)
backbone           efficientnet_lite0          offline backbone the teacher comes from
teacher            backbone                    ``backbone``: frozen backbone cut at stride 4/8
                                               (option b); ``distilled``: PDN-S distilled from
                                               the backbone on the training images (option a)
teacher_layers     (see TEACHER_LAYERS)        backbone layers making the teacher features
weights_path       none                        backbone weight file (else the installed package's)
channels           384                         distilled teacher width: the target's feature dims
                                               are average-pooled to it when there are more
steps              1000                        student/autoencoder optimiser steps
distill_steps      1000                        teacher distillation steps (``distilled`` only)
batch_size         1                           images per step (the paper uses 1)
lr, weight_decay   1e-4, 1e-5                  Adam; lr x0.1 for the last 5% of steps
distill_lr         1e-4                        Adam lr of the teacher distillation
hard_quantile      0.999                       student loss = mean distance above this quantile
single_pass        true                        ST loss on the augmented image too: one teacher +
                                               one student pass per step instead of two
crop_size          128                         student/teacher loss on a random crop of this side
                                               (the AE still sees the whole image); 0: whole image
norm_images        64                          images for the teacher channel mean/std
val_fraction       0.1                         normal images held out for the map quantiles
checkpoint_dir     none                        save every ``checkpoint_every`` steps, resume
checkpoint_every   100
progress           true                        tqdm bar
seed               0
=================  ==========================  ===============================================

Departures from the paper, each forced by what is reachable offline (see README.md): the
teacher is not a PDN distilled from WideResNet-101 on ImageNet, and the ImageNet penalty
term of the student loss is dropped (no ImageNet images here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..base import AnomalyModel
from ..common.onnx_export import export_graph
from .anomaly_map import map_quantiles
from .torch_model import EfficientAdModel, count_conv_flops
from .train import EfficientAdTrainer


class EfficientAD(AnomalyModel):
    kind = "efficientad"

    def __init__(self, input_size: Sequence[int] | int = (256, 256), backbone: str = "efficientnet_lite0",
                 val_fraction: float = 0.1, seed: int = 0, **training: Any) -> None:
        """``training``: the options of :class:`EfficientAdTrainer` (the table above)."""
        from ..common.backbones import get_spec

        size = tuple(int(v) for v in (input_size if isinstance(input_size, (list, tuple)) else (input_size,) * 2))
        if size[0] != size[1]:
            raise ValueError(f"EfficientAD needs a square input, got {size}")
        spec = get_spec(backbone)  # the input normalisation the backbone was trained with
        super().__init__(size, spec.mean, spec.std)
        self.size = size[0]
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.trainer = EfficientAdTrainer(self.size, spec.mean, spec.std, backbone, seed=self.seed, **training)
        self.model: EfficientAdModel | None = None
        self.backbone_info: dict[str, Any] | None = None
        self.manifest_extra: dict[str, Any] = {}

    def _to_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(self.preprocess(images))

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[:2] != (self.size, self.size):
            import cv2

            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def fit(self, images: Sequence[np.ndarray]) -> "EfficientAD":
        """Train on most images; on the held-out rest, calibrate the maps' quantile normalisation."""
        if len(images) < 2:
            raise ValueError("EfficientAD needs at least 2 normal images (training + validation)")
        order = np.random.default_rng(self.seed).permutation(len(images))
        n_val = min(len(images) - 1, max(1, int(round(len(images) * self.val_fraction))))
        val = [images[i] for i in sorted(order[:n_val])]
        train = [images[i] for i in sorted(order[n_val:])]
        # uint8 keeps the whole training set small (666 x 256 x 256 x 3 = 131 MB).
        data = torch.from_numpy(np.stack([self._resized(im) for im in train])).permute(0, 3, 1, 2).contiguous()
        model = self.model = self.trainer.train(data)

        model.eval()
        maps_st, maps_ae = [], []
        with torch.no_grad():
            for i in range(0, len(val), 8):
                st, ae = model.raw_maps(self._to_input(val[i:i + 8]))
                maps_st.append(st)
                maps_ae.append(ae)
        model.quantiles_st.copy_(map_quantiles(torch.cat(maps_st)))
        model.quantiles_ae.copy_(map_quantiles(torch.cat(maps_ae)))
        self.backbone_info = self.trainer.backbone_info
        self.manifest_extra.update({
            **self.trainer.manifest_extra, "n_train": len(train), "n_quantile_val": len(val),
            "quantiles_st": model.quantiles_st.tolist(), "quantiles_ae": model.quantiles_ae.tolist(),
            "gflops_per_image": round(count_conv_flops(model, self.size) / 1e9, 3),
            "penalty": "dropped (no ImageNet images offline)",
        })
        return self

    def score_tensor(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        assert self.model is not None, "fit() first"
        self.model.eval()
        with torch.no_grad():
            scores, maps = self.model(x)
        return scores.numpy(), maps.numpy()

    def score(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.score_tensor(self._to_input(images))

    def export_onnx(self, path: Path) -> None:
        assert self.model is not None, "fit() first"
        export_graph(self.model, path, ["score", "anomaly_map"], self.size, self.size)


def build_model(**options: Any) -> EfficientAD:
    return EfficientAD(**options)
