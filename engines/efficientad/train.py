"""EfficientAD-S training: the teacher (frozen backbone or distilled PDN), the student + autoencoder loop,
resumable checkpoints. :class:`~.model.EfficientAD` calls :class:`EfficientAdTrainer` from ``fit``; its
docstring lists the options and the departures from the paper.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .torch_model import BackboneTeacher, EfficientAdModel, PDNSmall, pdn_output_size

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


class EfficientAdTrainer:
    """Fits the networks of an :class:`EfficientAdModel` on uint8 ``N x 3 x size x size`` normal images."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], backbone: str, *,
                 teacher: str = "backbone", teacher_layers: Sequence[str] | None = None, channels: int = 384,
                 steps: int = 1000, distill_steps: int = 1000, batch_size: int = 1, lr: float = 1e-4,
                 distill_lr: float = 1e-4, hard_quantile: float = HARD_QUANTILE,
                 weight_decay: float = 1e-5, single_pass: bool = True, crop_size: int = 128,
                 checkpoint_dir: str | None = None, checkpoint_every: int = 100,
                 progress: bool = True, seed: int = 0, norm_images: int = 64,
                 weights_path: str | None = None) -> None:
        if teacher not in ("backbone", "distilled"):
            raise ValueError(f"teacher must be 'backbone' or 'distilled', got {teacher!r}")
        self.size = int(size)
        self.mean = torch.tensor(list(mean)).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std)).view(1, 3, 1, 1)
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
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.progress = bool(progress)
        self.seed = int(seed)
        self.norm_images = int(norm_images)
        self.model: EfficientAdModel | None = None
        self.backbone_info: dict[str, Any] | None = None
        self.manifest_extra: dict[str, Any] = {}
        self._distilled_state: dict[str, Any] = {}
        self.start_step = 0  # where the last train() began (after a resume: the checkpoint's step)

    # ------------------------------------------------------------------ helpers
    def _config(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (not ``steps``: a run may be extended)."""
        return {"size": self.size, "backbone": self.backbone_name, "teacher": self.teacher_kind,
                "layers": self.teacher_layers, "channels": self.channels, "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay, "single_pass": self.single_pass,
                "crop_size": self.crop_size, "hard_quantile": self.hard_quantile,
                "seed": self.seed, "distill_steps": self.distill_steps if self.teacher_kind == "distilled" else 0,
                "distill_lr": self.distill_lr if self.teacher_kind == "distilled" else 0}

    def _normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the backbone's input normalisation (as the exported graph's preprocessing)."""
        return (x01 - self.mean) / self.std

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
        path = self.checkpoint_dir / CHECKPOINT_FILE
        # Written aside, then renamed: a run killed mid-save keeps its previous checkpoint.
        torch.save(dict(state, config=self._config(), config_digest=_config_digest(self._config())),
                   path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)

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

    # ------------------------------------------------------------------ train
    def train(self, data: torch.Tensor) -> EfficientAdModel:
        """The teacher, then the student and autoencoder (resuming from ``checkpoint_dir`` if it holds a run
        with the same options); the returned model still needs its map quantiles."""
        torch.manual_seed(self.seed)
        started = time.perf_counter()
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
        self.manifest_extra.update({
            "teacher": self.teacher_kind, "steps": self.steps, "batch_size": self.batch_size,
            "distill_steps": self.distill_steps if self.teacher_kind == "distilled" else 0,
            "single_pass": self.single_pass, "crop_size": self.crop_size, "lr": self.lr,
            "hard_quantile": self.hard_quantile,
            "teacher_seconds": round(teacher_s, 1),
            "train_seconds": round(time.perf_counter() - started - teacher_s, 1),
        })
        return model

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

