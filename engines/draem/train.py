"""DRAEM training: the synthetic anomalies and the loop. :class:`~.model.Draem` calls
:class:`DraemTrainer` from ``fit``; its docstring lists the options.

A synthetic anomaly (the paper's recipe): a Perlin-noise field at a random scale (2^0..2^5 cells per
side, independently in x and y), rotated by a random angle and thresholded at 0.5, is the mask ``M``;
the image under it is replaced by a foreign texture ``A`` blended with opacity ``beta`` ~ U(0, 0.8):

    augmented = (1 - M) * image + (1 - beta) * M * A + beta * M * image

Half the training images (``anomaly_prob``) get one; the rest are shown clean with an empty mask.

The paper takes ``A`` from the DTD texture set, which cannot be downloaded here. Two replacements
(``texture``):

* ``procedural``: fractal Perlin noise, stripes or a checkerboard at a random angle and period, each
  between two random colours;
* ``self``: another training image of the same set, rotated, flipped, shifted and colour-jittered
  (brightness, contrast, gamma, channel order, sometimes inverted);
* ``mixed`` (default): one or the other with equal probability. Foreign patterns teach the
  discriminator sharp, unfamiliar boundaries; the set's own material, displaced and recoloured,
  teaches it anomalies that look like the product's surface (misplaced or discoloured material).
  Which mix suits which product is not measured yet.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .torch_model import DraemModel

log = logging.getLogger(__name__)

TEXTURES = ("procedural", "self", "mixed")


# ---------------------------------------------------------------- Perlin noise
def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res`` cells per axis; values in about [-1, 1]."""
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    dy, dx = math.ceil(shape[0] / ry), math.ceil(shape[1] / rx)  # pixels per cell; cropped afterwards
    h, w = ry * dy, rx * dx
    gy, gx = np.meshgrid((np.arange(h) / dy) % 1, (np.arange(w) / dx) % 1, indexing="ij")
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def corner(oy: int, ox: int) -> np.ndarray:
        g = grads[oy:oy + ry, ox:ox + rx].repeat(dy, 0).repeat(dx, 1)
        return g[..., 0] * (gy - oy) + g[..., 1] * (gx - ox)

    ty, tx = _fade(gy), _fade(gx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (math.sqrt(2) * (top * (1 - ty) + bottom * ty))[:shape[0], :shape[1]].astype(np.float32)


def fractal_perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                   octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Octaves of :func:`perlin`, each at twice the cells and ``persistence`` times the amplitude."""
    total = np.zeros(shape, np.float32)
    amplitude, norm = 1.0, 0.0
    for o in range(octaves):
        total += amplitude * perlin(shape, (res[0] * 2 ** o, res[1] * 2 ** o), rng)
        norm += amplitude
        amplitude *= persistence
    return total / norm


def _rotate(image: np.ndarray, angle: float, border: int = cv2.BORDER_REFLECT) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)


def perlin_mask(size: tuple[int, int], rng: np.random.Generator, min_scale: int = 0, max_scale: int = 6,
                threshold: float = 0.5) -> np.ndarray:
    """The paper's anomaly mask: Perlin noise at 2^[min_scale, max_scale) cells per axis, rotated by up to
    +-90 degrees, > ``threshold`` -> 1. float32 H x W of 0/1 (may come out empty, as in the paper)."""
    top = max(min_scale + 1, min(max_scale, int(math.log2(max(2, min(size) // 2))) + 1))  # >= 2 px per cell
    sy, sx = (int(v) for v in rng.integers(min_scale, top, 2))
    noise = _rotate(perlin(size, (2 ** sy, 2 ** sx), rng), float(rng.uniform(-90, 90)))
    return (noise > threshold).astype(np.float32)


# ---------------------------------------------------------------- textures (the DTD replacement)
def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)


def procedural_texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random fractal-noise, stripe or checker pattern between two random colours: H x W x 3 in [0, 1]."""
    h, w = size
    kind = rng.integers(3)
    if kind == 0:
        res = int(2 ** rng.integers(0, 4))
        t = fractal_perlin(size, (res, res), rng)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        period = rng.uniform(3, max(4.0, min(h, w) / 3))
        if kind == 1:  # stripes, soft or hard
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
            if rng.random() < 0.5:
                t = (t > 0.5).astype(np.float32)
        else:  # checkerboard
            v = -xx * np.sin(angle) + yy * np.cos(angle)
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    c0, c1 = _two_colours(rng)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def self_texture(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A training image (uint8 N x H x W x 3), rotated, flipped, shifted and colour-jittered: H x W x 3 in [0, 1]."""
    image = images[rng.integers(len(images))].astype(np.float32) / 255.0
    h, w = image.shape[:2]
    image = _rotate(image, float(rng.uniform(0, 360)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    image = np.roll(image, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    image = image[..., rng.permutation(3)]
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.5, 1.5) + mean * rng.uniform(0.5, 1.5) + rng.uniform(-0.2, 0.2)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.5, 2.0)
    if rng.random() < 0.2:
        image = 1.0 - image
    return np.ascontiguousarray(image, dtype=np.float32)


def blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """``(1 - M) image + (1 - beta) M texture + beta M image`` (all float, H x W x 3; mask H x W)."""
    m = mask[..., None]
    return (1 - m) * image + (1 - beta) * m * texture + beta * m * image


class AnomalySynthesiser:
    """Synthetic anomalies on a uint8 N x H x W x 3 training set (the module docstring has the recipe)."""

    def __init__(self, images: np.ndarray, texture: str = "mixed", beta_max: float = 0.8,
                 anomaly_prob: float = 0.5, min_scale: int = 0, max_scale: int = 6, threshold: float = 0.5) -> None:
        if texture not in TEXTURES:
            raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
        self.images = images
        self.texture = texture
        self.beta_max, self.anomaly_prob = float(beta_max), float(anomaly_prob)
        self.min_scale, self.max_scale, self.threshold = int(min_scale), int(max_scale), float(threshold)

    def texture_for(self, rng: np.random.Generator) -> np.ndarray:
        size = self.images.shape[1:3]
        use_self = self.texture == "self" or (self.texture == "mixed" and rng.random() < 0.5)
        return self_texture(self.images, rng) if use_self else procedural_texture(size, rng)

    def one(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(augmented image, mask) for one float image in [0, 1]; clean with an empty mask 1 - anomaly_prob of the time."""
        if rng.random() >= self.anomaly_prob:
            return image, np.zeros(image.shape[:2], np.float32)
        mask = perlin_mask(image.shape[:2], rng, self.min_scale, self.max_scale, self.threshold)
        beta = float(rng.uniform(0, self.beta_max))
        return blend(image, self.texture_for(rng), mask, beta).astype(np.float32), mask

    def batch(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clean N x 3 x H x W, augmented N x 3 x H x W, masks N x 1 x H x W), float32 in [0, 1]."""
        clean = self.images[indices].astype(np.float32) / 255.0
        pairs = [self.one(image, rng) for image in clean]
        augmented = np.stack([p[0] for p in pairs])
        masks = np.stack([p[1] for p in pairs])[:, None]
        return clean.transpose(0, 3, 1, 2), augmented.transpose(0, 3, 1, 2), masks


# ---------------------------------------------------------------- losses
def _gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean structural similarity of two N x C x H x W images in [0, 1] (Gaussian window, sigma 1.5)."""
    c = a.shape[1]
    kernel = _gaussian_window(window, 1.5, c).to(a)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=pad, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.mean()


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of 2-class logits (N x 2 x H x W) against a 0/1 mask (N x 1 x H x W), mean over pixels."""
    log_p = F.log_softmax(logits, dim=1).gather(1, mask.round().long())
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


# ---------------------------------------------------------------- the loop
class DraemTrainer:
    def __init__(self, size: tuple[int, int], recon_width: int = 8, disc_width: int = 8,
                 smooth_kernel: int = 11, steps: int = 1000, batch_size: int = 4, lr: float = 1e-3,
                 texture: str = "mixed", beta_max: float = 0.8, anomaly_prob: float = 0.5,
                 threads: int = 0, progress: bool = True, seed: int = 0) -> None:
        if texture not in TEXTURES:
            raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
        self.size = size
        self.recon_width, self.disc_width, self.smooth_kernel = int(recon_width), int(disc_width), int(smooth_kernel)
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.texture, self.beta_max, self.anomaly_prob = texture, float(beta_max), float(anomaly_prob)
        self.threads, self.progress, self.seed = int(threads), bool(progress), int(seed)
        self.final_losses: dict[str, float] = {}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def options(self) -> dict[str, Any]:
        return {"recon_width": self.recon_width, "disc_width": self.disc_width, "smooth_kernel": self.smooth_kernel,
                "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "texture": self.texture,
                "beta_max": self.beta_max, "anomaly_prob": self.anomaly_prob, "seed": self.seed}

    def train(self, images: np.ndarray) -> DraemModel:
        """``images``: uint8 N x H x W x 3 at the input size. Returns the trained model (eval mode, on the CPU)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        synth = AnomalySynthesiser(images, self.texture, self.beta_max, self.anomaly_prob)
        model = DraemModel(self.recon_width, self.disc_width, self.smooth_kernel).to(self.device).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr)
        # The paper's schedule: lr x0.2 at 80% and again at 90% of training.
        milestones = [int(self.steps * 0.8), int(self.steps * 0.9)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=0.2)
        started = time.perf_counter()
        totals = {"l2": 0.0, "ssim": 0.0, "focal": 0.0}
        window = max(1, min(50, self.steps))
        bar = tqdm(range(self.steps), desc="train draem", disable=not self.progress, mininterval=5)
        for step in bar:
            indices = rng.integers(len(images), size=self.batch_size)
            clean, augmented, masks = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                                       for a in synth.batch(indices, rng))
            reconstruction, logits = model.mask_logits(augmented)
            l2 = F.mse_loss(reconstruction, clean)
            ssim_loss = 1 - ssim(reconstruction, clean)
            focal = focal_loss(logits, masks)
            loss = l2 + ssim_loss + focal
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if step >= self.steps - window:  # the last steps' mean: what the manifest records
                for key, value in (("l2", l2), ("ssim", ssim_loss), ("focal", focal)):
                    totals[key] += value.item() / window
            if self.progress and step % 50 == 0:
                bar.set_postfix(l2=f"{l2.item():.4f}", ssim=f"{ssim_loss.item():.3f}", focal=f"{focal.item():.4f}")
        self.final_losses = {k: round(v, 6) for k, v in totals.items()}
        self.train_seconds = round(time.perf_counter() - started, 1)
        log.info("draem: %d steps in %.1fs on %s, final losses %s", self.steps, self.train_seconds, self.device,
                 self.final_losses)
        return model.cpu().eval()
