"""Datasets: MVTec AD layout and plain folders of normal images.

MVTec layout::

    root/train/good/*.png|jpg                  normal training images
    root/test/good/*                           normal test images
    root/test/<defect>/<stem>.*                defective test images
    root/ground_truth/<defect>/<stem>_mask.png pixel masks (0 normal, >0 defect)

Any size, grayscale or colour: images load as RGB uint8 and are resized to a
model's input by the engine; masks resize with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """An empty, missing or unreadable dataset."""


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as RGB uint8, optionally resized to ``size`` = (height, width)."""
    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def load_mask(path: str | Path | None, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask of ``size``; all False when the image has no mask file."""
    if path is None:
        return np.zeros(size, dtype=bool)
    with Image.open(path) as img:
        mask = np.asarray(img.convert("L"))
    if mask.shape != tuple(size):
        mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def normal_images(root: str | Path) -> list[Path]:
    """Training images: ``root/train/good`` for an MVTec folder, else every image under ``root``."""
    root = Path(root)
    folder = root / "train" / "good"
    paths = list_images(folder if folder.is_dir() else root)
    if not paths:
        raise DatasetError(f"no training images under {folder if folder.is_dir() else root}")
    return paths


@dataclass
class TestSample:
    path: Path
    defect: str  # "good" for normal images
    mask_path: Path | None

    @property
    def is_defective(self) -> bool:
        return self.defect != "good"


def test_samples(root: str | Path) -> list[TestSample]:
    """Labelled test images of an MVTec folder, with their mask files where they exist."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{root} has no test/ folder (MVTec layout expected)")
    samples: list[TestSample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in list_images(defect_dir):
            mask = None
            if defect_dir.name != "good":
                candidate = root / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
                mask = candidate if candidate.exists() else None
            samples.append(TestSample(path, defect_dir.name, mask))
    if not samples:
        raise DatasetError(f"no test images under {test_dir}")
    return samples
