"""The SimpleNet model class: the :class:`AnomalyModel` that ``lineguard train --model simplenet`` builds.

Fitting: run the frozen backbone once over every normal image (through ONNX Runtime, as PatchCore
does) and cache the patch features; then train the feature adaptor and the discriminator on the
cache (:mod:`.train`). Scoring and export need no cache: the exported graph is the whole network.

Options (``--option KEY=VALUE``):

==================  ==================  =================================================================
option              default             meaning
==================  ==================  =================================================================
backbone            mobilenet_v2        frozen feature extractor (``--backbone``), as PatchCore's default
layers              its default layers  comma-separated (mobilenet_v2: features.6,features.13)
input_size          (256, 256)          ``--size``
target_dim          none                average-pool the concatenated channels to this many (none: all)
hidden_dim          256                 discriminator hidden width
epochs              40                  passes over the cached patch features
steps               0                   optimiser steps; > 0 overrides ``epochs``
batch_size          8                   images' worth of patches per step (8 x 1024 at 256 px)
noise_std           0.1                 std of the Gaussian noise making anomalous features (the paper's 0.015 does not train on these features: docs/engines.md)
margin              0.5                 truncated L1 margins +margin / -margin (paper: 0.5 / -0.5)
adaptor_lr          1e-4                Adam learning rate of the adaptor (paper)
discriminator_lr    2e-4                Adam learning rate of the discriminator (paper)
weight_decay        1e-5                discriminator weight decay
threads             1                   torch threads while training (0: torch's default; see :mod:`.train`)
sigma               4                   Gaussian blur of the map, as PatchCore
extract_batch       16                  images per backbone batch while caching features
weights_path        none                backbone weight file
seed, progress      0, true
==================  ==================  =================================================================
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from ..base import AnomalyModel
from ..common.backbones import BACKBONES, backbone_info, get_spec, load_backbone
from ..common.onnx_export import export_graph
from .torch_model import SimpleNetModel
from .train import train_on_features

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_INPUT_SIZE = (256, 256)
TRAINING_OPTIONS = ("epochs", "steps", "batch_size", "noise_std", "margin", "adaptor_lr", "discriminator_lr",
                    "weight_decay", "threads")


class SimpleNet(AnomalyModel):
    kind = "simplenet"

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str] | None = None,
                 input_size: Sequence[int] = DEFAULT_INPUT_SIZE, target_dim: int | None = None,
                 hidden_dim: int = 256, epochs: int = 40, steps: int = 0, batch_size: int = 8,
                 noise_std: float = 0.1, margin: float = 0.5, adaptor_lr: float = 1e-4,
                 discriminator_lr: float = 2e-4, weight_decay: float = 1e-5, threads: int = 1, sigma: float = 4.0,
                 extract_batch: int = 16, weights_path: str | None = None, seed: int = 0,
                 progress: bool = True) -> None:
        spec = get_spec(backbone)
        super().__init__((int(input_size[0]), int(input_size[1])), mean=spec.mean, std=spec.std)
        self.layers = list(layers or spec.default_layers)
        self.training_options = dict(epochs=int(epochs), steps=int(steps), batch_size=int(batch_size),
                                     noise_std=float(noise_std), margin=float(margin), adaptor_lr=float(adaptor_lr),
                                     discriminator_lr=float(discriminator_lr), weight_decay=float(weight_decay),
                                     threads=int(threads))
        self.extract_batch = int(extract_batch)
        self.seed = int(seed)
        self.progress = progress
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's generator untouched
            torch.manual_seed(self.seed)
            self.model = SimpleNetModel(load_backbone(backbone, weights_path), self.layers,
                                        (self.input.height, self.input.width), target_dim=target_dim,
                                        hidden_dim=hidden_dim, sigma=sigma).eval()
        self.backbone_info = backbone_info(backbone, self.layers, weights_path)
        self.manifest_extra: dict[str, Any] = {
            **self.training_options, "hidden_dim": int(hidden_dim), "sigma": sigma, "seed": self.seed,
            "feature_dim": self.model.feature_dim, "embedding_dim": self.model.embedding_dim,
            "grid_size": list(self.model.grid_size), "image_score": "max of the anomaly map",
        }

    def extract_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The patch features of ``images``, ``(N * grid h * grid w) x D``: the training cache.

        Computed by the feature part of the network exported to ONNX Runtime (faster than eager torch on CPU,
        and the very features the production graph computes)."""
        hw = self.model.grid_size[0] * self.model.grid_size[1]
        features = np.empty((len(images) * hw, self.model.embedding_dim), dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "embedding.onnx"
            export_graph(_Embedder(self.model), path, ["embedding"], self.input.height, self.input.width)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            for start in tqdm(range(0, len(images), self.extract_batch), desc="features", unit="batch",
                              disable=not self.progress, mininterval=1.0):
                batch = self.preprocess(images[start:start + self.extract_batch])
                emb = session.run(["embedding"], {"image": batch})[0]  # n x HW x D
                features[start * hw:(start + len(batch)) * hw] = emb.reshape(-1, emb.shape[-1])
        return features

    def fit(self, images: Sequence[np.ndarray]) -> "SimpleNet":
        if len(images) < 1:
            raise ValueError("SimpleNet needs at least one normal image")
        started = time.perf_counter()
        features = self.extract_features(images)
        extract_s = time.perf_counter() - started
        hw = self.model.grid_size[0] * self.model.grid_size[1]
        figures = train_on_features(self.model, features, hw, seed=self.seed, progress=self.progress,
                                    **self.training_options)
        self.manifest_extra.update({
            "n_patches": int(len(features)), "feature_std": round(float(features.std()), 6),
            "feature_cache_mb": round(features.nbytes / 2**20, 1), "feature_extraction_s": round(extract_s, 2),
            "training": figures,
        })
        log.info("simplenet: %d images, %d cached patches (%.1fs), trained in %.1fs", len(images), len(features),
                 extract_s, figures["train_s"])
        return self

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        scores, maps = self.model(torch.from_numpy(self.preprocess(images)))
        return scores.numpy(), maps.numpy()

    def export_onnx(self, path: Path) -> None:
        """The whole model, backbone to blurred map, as one graph with a dynamic batch axis."""
        self.model.eval()
        export_graph(self.model, path, ["score", "anomaly_map"], self.input.height, self.input.width)


class _Embedder(nn.Module):
    """Only the patch features of :class:`SimpleNetModel`, ``N x HW x D`` (used while fitting)."""

    def __init__(self, model: SimpleNetModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images).flatten(2).transpose(1, 2)


OPTIONS = {"backbone", "layers", "input_size", "target_dim", "hidden_dim", *TRAINING_OPTIONS, "sigma",
           "extract_batch", "weights_path", "seed", "progress"}


def build_model(**options: Any) -> SimpleNet:
    """``lineguard train --model simplenet [--backbone B] [--size S] [--option KEY=VALUE ...]`` (options above)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"unknown simplenet options {sorted(unknown)}; known: {sorted(OPTIONS)}; "
                         f"backbones: {sorted(BACKBONES)}")
    if isinstance(options.get("layers"), str):
        options["layers"] = [s for s in options["layers"].split(",") if s]
    if isinstance(options.get("input_size"), int):
        options["input_size"] = (options["input_size"], options["input_size"])
    return SimpleNet(**options)
