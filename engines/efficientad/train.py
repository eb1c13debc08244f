"""EfficientAD-S training: teacher, student + autoencoder loop, map calibration, ONNX export.

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

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..base import AnomalyModel
from ..manifest import Manifest, Thresholds
from ..runtime import preprocess
from .anomaly_map import map_quantiles
from .torch_model import BackboneTeacher, EfficientAdModel, PDNSmall, count_conv_flops, pdn_output_size

log = logging.getLogger(__name__)

HARD_QUANTILE = 0.999  # only the hardest 0.1% of student-teacher distances drive the student
CHECKPOINT_FILE = "efficientad.pt"

# Per backbone: (layers for the frozen teacher, option b: stride 4 + 8, a receptive field close to the
# PDN's 33 px; layers for the distillation target, option a: stride 8 + 16, like the paper's WRN
# layer2 + layer3, which the PDN approximates within its own 33 px).
TEACHER_LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "efficientnet_lite0": (("_blocks.2", "_blocks.4"), ("_blocks.4", "_blocks.10")),
    "efficientnet_lite1": (("_blocks.2", "_blocks.6"), ("_blocks.6", "_blocks.14")),
    "efficientnet_lite2": (("_blocks.2", "_blocks.6"), ("_blocks.6", "_blocks.14")),
    "mobilenet_v2": (("features.3", "features.6"), ("features.6", "features.13")),
}


def _feature_extractor(backbone: str, layers: Sequence[str],
                       weights_path: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``module(x) -> [features per layer]`` from the shared offline backbones, plus manifest info."""
    from ..common.backbones import FeatureExtractor, backbone_info, load_backbone

    extractor = FeatureExtractor(load_backbone(backbone, weights_path), list(layers))

    class _AsList(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = extractor

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            out = self.inner(x)
            return list(out.values()) if isinstance(out, dict) else list(out)

    return _AsList().eval(), backbone_info(backbone, layers, weights_path)


def _augment(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's autoencoder augmentation: one of brightness/contrast/saturation x U(0.8, 1.2)."""
    out = torch.empty_like(x01)
    kinds = torch.randint(0, 3, (len(x01),), generator=generator)
    factors = 0.8 + 0.4 * torch.rand(len(x01), generator=generator)
    gray = (0.299 * x01[:, 0:1] + 0.587 * x01[:, 1:2] + 0.114 * x01[:, 2:3])
    for i, (kind, f) in enumerate(zip(kinds.tolist(), factors.tolist())):
        img = x01[i]
        if kind == 0:
            out[i] = img * f
        elif kind == 1:
            mean = gray[i].mean()
            out[i] = (img - mean) * f + mean
        else:
            out[i] = gray[i] + (img - gray[i]) * f
    return out.clamp_(0.0, 1.0)


def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean squared distance over the elements at or above the ``quantile`` of all distances.

    Mining only the hardest elements keeps the student from spending its
    capacity on easy (normal, well-predicted) features, so it stays unable to
    predict the teacher where the teacher sees something new.
    """
    distance = (teacher - student).pow(2)
    flat = distance.detach().flatten()
    # torch.quantile's linear interpolation (what the reference code uses), via kthvalue because
    # torch.quantile refuses inputs over 16M elements (a batch of 14 at 256 px).
    position = quantile * (flat.numel() - 1)
    low = int(math.floor(position))
    v_low = flat.kthvalue(low + 1).values
    v_high = flat.kthvalue(min(low + 2, flat.numel())).values
    threshold = v_low + (position - low) * (v_high - v_low)
    return distance[distance >= threshold].mean()


def _config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _Scorer(nn.Module):
    """The exported graph: image -> (score, anomaly_map); one output name per ONNX output."""

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image)


class EfficientAD(AnomalyModel):
    kind = "efficientad"

    def __init__(self, input_size: Sequence[int] = (256, 256), backbone: str = "efficientnet_lite0",
                 teacher: str = "backbone", teacher_layers: Sequence[str] | None = None, channels: int = 384,
                 steps: int = 1000, distill_steps: int = 1000, batch_size: int = 1, lr: float = 1e-4,
                 distill_lr: float = 1e-4, hard_quantile: float = HARD_QUANTILE,
                 weight_decay: float = 1e-5, single_pass: bool = True, crop_size: int = 128,
                 val_fraction: float = 0.1, checkpoint_dir: str | None = None, checkpoint_every: int = 100,
                 progress: bool = True, seed: int = 0, norm_images: int = 64,
                 weights_path: str | None = None) -> None:
        from ..common.backbones import get_spec

        size = tuple(int(v) for v in (input_size if isinstance(input_size, (list, tuple)) else (input_size,) * 2))
        if size[0] != size[1]:
            raise ValueError(f"EfficientAD needs a square input, got {size}")
        if teacher not in ("backbone", "distilled"):
            raise ValueError(f"teacher must be 'backbone' or 'distilled', got {teacher!r}")
        spec = get_spec(backbone)  # the input normalisation the backbone was trained with
        super().__init__(size, spec.mean, spec.std)
        self.size = size[0]
        self.backbone_name = backbone
        self.weights_path = weights_path
        self.teacher_kind = teacher
        if teacher_layers is None:
            if backbone not in TEACHER_LAYERS:
                raise ValueError(f"no default teacher layers for backbone {backbone!r}; pass teacher_layers=[...]"
                                 f" (known: {sorted(TEACHER_LAYERS)})")
            teacher_layers = TEACHER_LAYERS[backbone][0 if teacher == "backbone" else 1]
        self.teacher_layers = list(teacher_layers)
        self.channels = int(channels)
        self.steps, self.distill_steps = int(steps), int(distill_steps)
        self.batch_size = int(batch_size)
        self.lr, self.weight_decay, self.distill_lr = float(lr), float(weight_decay), float(distill_lr)
        self.hard_quantile = float(hard_quantile)
        self.single_pass = bool(single_pass)
        # A crop must leave a non-empty PDN output and fit in the image; else train on whole images.
        self.crop_size = int(crop_size) if 64 <= int(crop_size) < self.size else 0
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (the PDN stride), got {crop_size}")
        self.val_fraction = float(val_fraction)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.progress = bool(progress)
        self.seed = int(seed)
        self.norm_images = int(norm_images)
        self.model: EfficientAdModel | None = None
        self.backbone_info: dict[str, Any] | None = None
        self.manifest_extra: dict[str, Any] = {}
        self._distilled_state: dict[str, Any] = {}
        self.start_step = 0  # where the last fit() began (after a resume: the checkpoint's step)

    # ------------------------------------------------------------------ helpers
    def _config(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (not ``steps``: a run may be extended)."""
        return {"size": self.size, "backbone": self.backbone_name, "teacher": self.teacher_kind,
                "layers": self.teacher_layers, "channels": self.channels, "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay, "single_pass": self.single_pass,
                "crop_size": self.crop_size, "hard_quantile": self.hard_quantile,
                "seed": self.seed, "distill_steps": self.distill_steps if self.teacher_kind == "distilled" else 0,
                "distill_lr": self.distill_lr if self.teacher_kind == "distilled" else 0}

    def _to_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        spec = Manifest(kind=self.kind, name="", version="", input=self.input, thresholds=Thresholds(0.0, ""))
        return torch.from_numpy(preprocess(list(images), spec))

    def _normalise(self, x01: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.input.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.input.std).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def _batch01(self, data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W rows -> float [0, 1]."""
        return data[index].float().div_(255.0)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            return None
        path = self.checkpoint_dir / CHECKPOINT_FILE
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config_digest") != _config_digest(self._config()):
            raise ValueError(f"{path} was written with other options ({state.get('config')}); "
                             f"use another checkpoint_dir or the same options")
        return state

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = dict(state, config=self._config(), config_digest=_config_digest(self._config()))
        _atomic_save(state, self.checkpoint_dir / CHECKPOINT_FILE)

    # ------------------------------------------------------------------ teacher
    def _build_teacher(self, data: torch.Tensor, state: dict[str, Any] | None) -> nn.Module:
        out_size = pdn_output_size(self.size)
        extract, info = _feature_extractor(self.backbone_name, self.teacher_layers, self.weights_path)
        frozen = BackboneTeacher(extract, self.size, out_size).eval()
        self.backbone_info = dict(info, teacher=self.teacher_kind)
        if self.teacher_kind == "backbone":
            return frozen
        return self._distill(frozen, data, state)

    def _distill(self, target_net: BackboneTeacher, data: torch.Tensor, state: dict[str, Any] | None) -> PDNSmall:
        """Option (a): train a PDN-S to regress the backbone features on the training images.

        The target is the backbone's features, per-channel standardised and
        average-pooled over channels to ``channels`` when there are more (as
        PatchCore reduces dimensions); the paper distils from WRN-101 on ImageNet.
        """
        with torch.no_grad():
            probe = target_net(self._normalise(self._batch01(data, torch.arange(min(len(data), 8)))))
        width = min(self.channels, probe.shape[1])
        teacher = PDNSmall(width)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=self.distill_lr, weight_decay=1e-5)
        start = 0
        if state is not None and "teacher" in state:
            teacher.load_state_dict(state["teacher"])
            start = state["distill_step"]
            if "distill_optimizer" in state:
                optimizer.load_state_dict(state["distill_optimizer"])
            mean, std = state["distill_mean"], state["distill_std"]
        else:
            mean, std = self._channel_stats(lambda x: self._reduce(target_net(x), width), data)

        def target(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (self._reduce(target_net(x), width) - mean) / std

        bar = tqdm(range(start, self.distill_steps), desc="distil teacher", disable=not self.progress,
                   initial=start, total=self.distill_steps)
        loss_avg = float("nan")
        for step in bar:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7)
            index = torch.randint(0, len(data), (self.batch_size,), generator=generator)
            x01 = self._batch01(data, index)
            # Flips and 90-degree turns: the target is recomputed on the turned image, so they only add views.
            if torch.rand(1, generator=generator).item() < 0.5:
                x01 = x01.flip(-1)
            x01 = torch.rot90(x01, int(torch.randint(0, 4, (1,), generator=generator)), dims=(-2, -1))
            x = self._normalise(_augment(x01, generator))
            window = self._crop_window(generator)
            loss = F.mse_loss(teacher(self._crop_input(x, window)), self._crop_grid(target(x), window))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_avg = loss.item() if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss.item()
            bar.set_postfix(loss=f"{loss_avg:.4f}")
            done = step + 1
            if done % self.checkpoint_every == 0 or done == self.distill_steps:
                self._save_checkpoint({"phase": "distill", "distill_step": done, "teacher": teacher.state_dict(),
                                       "distill_optimizer": optimizer.state_dict(),
                                       "distill_mean": mean, "distill_std": std})
        self.manifest_extra["distill_loss"] = loss_avg
        self._distilled_state = {"teacher": teacher.state_dict(), "distill_step": self.distill_steps,
                                 "distill_mean": mean, "distill_std": std}
        return teacher.eval()

    def _crop_window(self, generator: torch.Generator) -> tuple[int, int, int] | None:
        """A random crop at input offset (4a, 4b): ``(a, b, n)`` with n its PDN output side.

        The unpadded PDN is exactly equivariant to shifts by its stride 4, so on
        the crop it computes rows/columns a..a+n-1 of its whole-image output: the
        losses on a crop are the whole-image losses restricted to a window, at
        (crop/size)^2 of the student's cost.
        """
        if not self.crop_size:
            return None
        span = (self.size - self.crop_size) // 4 + 1
        a, b = torch.randint(0, span, (2,), generator=generator).tolist()
        return a, b, pdn_output_size(self.crop_size)

    def _crop_input(self, x: torch.Tensor, window: tuple[int, int, int] | None) -> torch.Tensor:
        if window is None:
            return x
        a, b, _ = window
        return x[:, :, 4 * a:4 * a + self.crop_size, 4 * b:4 * b + self.crop_size]

    @staticmethod
    def _crop_grid(t: torch.Tensor, window: tuple[int, int, int] | None) -> torch.Tensor:
        if window is None:
            return t
        a, b, n = window
        return t[:, :, a:a + n, b:b + n]

    def _teacher_window(self, x: torch.Tensor, window: tuple[int, int, int] | None) -> torch.Tensor:
        """Normalised teacher features of the window: a PDN teacher runs on the crop alone (exact, cheaper);
        a backbone teacher on the whole image (cheap, and its padding makes crops inexact)."""
        assert self.model is not None
        if self.teacher_kind == "distilled":
            return self.model.teacher_features(self._crop_input(x, window))
        return self._crop_grid(self.model.teacher_features(x), window)

    @staticmethod
    def _reduce(features: torch.Tensor, width: int) -> torch.Tensor:
        if features.shape[1] == width:
            return features
        n, c, h, w = features.shape
        pooled = F.adaptive_avg_pool1d(features.permute(0, 2, 3, 1).reshape(-1, 1, c), width)
        return pooled.reshape(n, h, w, width).permute(0, 3, 1, 2)

    def _channel_stats(self, net: Any, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of ``net`` outputs over (up to ``norm_images``) training images."""
        count, total, total_sq = 0, None, None
        n = min(len(data), self.norm_images)
        with torch.no_grad():
            for i in range(0, n, 8):
                out = net(self._normalise(self._batch01(data, torch.arange(i, min(i + 8, n))))).double()
                s, sq = out.sum(dim=(0, 2, 3)), out.pow(2).sum(dim=(0, 2, 3))
                total = s if total is None else total + s
                total_sq = sq if total_sq is None else total_sq + sq
                count += out.shape[0] * out.shape[2] * out.shape[3]
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        return mean.float().view(1, -1, 1, 1), std.clamp_min(1e-6).float().view(1, -1, 1, 1)

    # ------------------------------------------------------------------ fit
    def fit(self, images: Sequence[np.ndarray]) -> "EfficientAD":
        if len(images) < 2:
            raise ValueError("EfficientAD needs at least 2 normal images (training + validation)")
        torch.manual_seed(self.seed)
        started = time.perf_counter()
        order = np.random.default_rng(self.seed).permutation(len(images))
        n_val = min(len(images) - 1, max(1, int(round(len(images) * self.val_fraction))))
        val = [images[i] for i in sorted(order[:n_val])]
        train = [images[i] for i in sorted(order[n_val:])]
        # uint8 keeps the whole training set small (666 x 256 x 256 x 3 = 131 MB).
        data = torch.from_numpy(np.stack([self._resized(im) for im in train])).permute(0, 3, 1, 2).contiguous()

        state = self._load_checkpoint()
        teacher = self._build_teacher(data, state)
        model = EfficientAdModel(teacher, self._teacher_channels(teacher, data), self.size)
        if state is not None and "teacher_mean" in state:
            mean, std = state["teacher_mean"], state["teacher_std"]
        else:
            mean, std = self._channel_stats(teacher, data)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(std)
        teacher_s = time.perf_counter() - started

        self.model = model
        self._train_loop(data, state)
        train_s = time.perf_counter() - started - teacher_s

        model.eval()
        maps_st, maps_ae = [], []
        with torch.no_grad():
            for i in range(0, len(val), 8):
                st, ae = model.raw_maps(self._to_input(val[i:i + 8]))
                maps_st.append(st)
                maps_ae.append(ae)
        model.quantiles_st.copy_(map_quantiles(torch.cat(maps_st)))
        model.quantiles_ae.copy_(map_quantiles(torch.cat(maps_ae)))
        self.manifest_extra.update({
            "teacher": self.teacher_kind, "steps": self.steps, "batch_size": self.batch_size,
            "distill_steps": self.distill_steps if self.teacher_kind == "distilled" else 0,
            "single_pass": self.single_pass, "crop_size": self.crop_size, "lr": self.lr,
            "hard_quantile": self.hard_quantile, "n_train": len(train), "n_quantile_val": len(val),
            "quantiles_st": model.quantiles_st.tolist(), "quantiles_ae": model.quantiles_ae.tolist(),
            "teacher_seconds": round(teacher_s, 1), "train_seconds": round(train_s, 1),
            "gflops_per_image": round(count_conv_flops(model, self.size) / 1e9, 3),
            "penalty": "dropped (no ImageNet images offline)",
        })
        return self

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[:2] != (self.size, self.size):
            import cv2

            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _teacher_channels(self, teacher: nn.Module, data: torch.Tensor) -> int:
        with torch.no_grad():
            return int(teacher(self._normalise(self._batch01(data, torch.arange(1)))).shape[1])

    def _train_loop(self, data: torch.Tensor, state: dict[str, Any] | None) -> None:
        model = self.model
        assert model is not None
        params = list(model.student.parameters()) + list(model.autoencoder.parameters())
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        start = 0
        if state is not None and "student" in state:
            model.student.load_state_dict(state["student"])
            model.autoencoder.load_state_dict(state["autoencoder"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
        self.start_step = start
        teacher_state = self._distilled_state  # carried along so a resume skips the distillation
        c = model.channels
        decay_at = int(0.95 * self.steps)  # the paper: lr x0.1 after 66,500 of 70,000 steps
        model.train()
        bar = tqdm(range(start, self.steps), desc="train efficientad", disable=not self.progress,
                   initial=start, total=self.steps)
        avg: dict[str, float] = {}
        for step in bar:
            for group in optimizer.param_groups:  # a function of the step, so resuming needs no scheduler state
                group["lr"] = self.lr * (0.1 if step >= decay_at else 1.0)
            # Per-step seeds: the images, augmentations and dropout of step k are the same
            # whether or not the run was interrupted before it.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            torch.manual_seed(self.seed * 1_000_003 + step)
            index = torch.randint(0, len(data), (self.batch_size,), generator=generator)
            x01 = self._batch01(data, index)
            aug = self._normalise(_augment(x01, generator))
            window = self._crop_window(generator)
            teacher_aug = self._teacher_window(aug, window)
            student_aug = model.student(self._crop_input(aug, window))
            if self.single_pass:
                teacher_img, student_img = teacher_aug, student_aug
            else:
                x = self._normalise(x01)
                teacher_img, student_img = self._teacher_window(x, window), model.student(self._crop_input(x, window))
            ae = self._crop_grid(model.autoencoder(aug), window)  # the AE always sees the whole image
            loss_st = hard_feature_loss(teacher_img, student_img[:, :c], self.hard_quantile)
            loss_ae = (teacher_aug - ae).pow(2).mean()
            loss_stae = (ae - student_aug[:, c:]).pow(2).mean()
            loss = loss_st + loss_ae + loss_stae
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in (("st", loss_st), ("ae", loss_ae), ("stae", loss_stae)):
                v = float(value.detach())
                avg[key] = v if key not in avg else 0.95 * avg[key] + 0.05 * v
            bar.set_postfix({k: f"{v:.3f}" for k, v in avg.items()})
            done = step + 1
            if done % self.checkpoint_every == 0 or done == self.steps:
                self._save_checkpoint({
                    "phase": "train", "step": done, "student": model.student.state_dict(),
                    "autoencoder": model.autoencoder.state_dict(), "optimizer": optimizer.state_dict(),
                    "teacher_mean": model.teacher_mean.clone(), "teacher_std": model.teacher_std.clone(),
                    **teacher_state,
                })
        self.manifest_extra["final_losses"] = {k: round(v, 5) for k, v in avg.items()}
        model.eval()

    # ------------------------------------------------------------------ score / export
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
        self.model.eval()
        dummy = torch.zeros(2, 3, self.size, self.size)
        torch.onnx.export(
            _Scorer(self.model), (dummy,), str(path), input_names=["image"],
            output_names=["score", "anomaly_map"], opset_version=17, dynamo=False,
            dynamic_axes={"image": {0: "N"}, "score": {0: "N"}, "anomaly_map": {0: "N"}},
        )


def build_model(**options: Any) -> EfficientAD:
    return EfficientAD(**options)
