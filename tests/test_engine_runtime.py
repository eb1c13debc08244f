"""The scoring engine's preprocessing: the table lookup equals the float arithmetic it replaces."""

from __future__ import annotations

import numpy as np

from lineguard.engines.manifest import InputSpec, Manifest, Thresholds
from lineguard.engines.runtime import preprocess


def _manifest(height: int, width: int) -> Manifest:
    return Manifest(kind="baseline", name="t", version="1",
                    input=InputSpec(height=height, width=width, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                    thresholds=Thresholds(value=1.0, method="normal_quantile"))


def test_preprocess_is_the_normalised_chw_batch() -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(48, 64)
    images = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    mean = np.asarray(manifest.input.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(manifest.input.std, np.float32) * 255.0)
    expected = ((images.astype(np.float32) - mean) * inv_std).transpose(0, 3, 1, 2)
    got = preprocess(images, manifest)
    assert got.dtype == np.float32 and got.shape == (4, 3, 48, 64) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_preprocess_resizes_and_takes_grayscale() -> None:
    rng = np.random.default_rng(1)
    manifest = _manifest(32, 32)
    gray = rng.integers(0, 256, (64, 80), dtype=np.uint8)  # larger: area-resized
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # smaller: linear-resized
    got = preprocess([gray, small], manifest)
    assert got.shape == (2, 3, 32, 32)
    # Grayscale becomes three equal planes before normalisation: undo it and compare the planes.
    std = np.asarray(manifest.input.std, np.float32)[:, None, None] * 255.0
    mean = np.asarray(manifest.input.mean, np.float32)[:, None, None] * 255.0
    levels = got[0] * std + mean
    np.testing.assert_allclose(levels[0], levels[1], atol=1e-3)
    np.testing.assert_allclose(levels[1], levels[2], atol=1e-3)
