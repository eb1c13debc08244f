"""The synthetic camera: deterministic, fast, and its defects visible to a naive detector."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from PIL import Image

from lineguard.producers.sources import FolderSource
from lineguard.producers.synthetic import DEFECT_KINDS, PRODUCTS, SyntheticCamera


def auroc(scores_negative: np.ndarray, scores_positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula; ties get mean ranks."""
    scores = np.concatenate([scores_negative, scores_positive])
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average the ranks of tied scores
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(scores_positive), len(scores_negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auroc_formula() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_same_seed_same_bytes(product: str) -> None:
    a = SyntheticCamera(product, size=128, seed=7, defect_rate=0.5)
    b = SyntheticCamera(product, size=128, seed=7, defect_rate=0.5)
    for index in (0, 1, 17, 123):
        fa, fb = a.render(index), b.render(index)
        assert fa.image.tobytes() == fb.image.tobytes()
        assert fa.mask.tobytes() == fb.mask.tobytes()
        assert (fa.defective, fa.defect) == (fb.defective, fb.defect)
    other_seed = SyntheticCamera(product, size=128, seed=8, defect_rate=0.5)
    assert other_seed.render(0).image.tobytes() != a.render(0).image.tobytes()
    assert a.render(1).image.tobytes() != a.render(2).image.tobytes()


def test_image_contract() -> None:
    cam = SyntheticCamera("washer", size=96, seed=0, defect_rate=0.0)
    frame = cam.render(0)
    assert frame.image.shape == (96, 96, 3) and frame.image.dtype == np.uint8
    assert frame.mask.shape == (96, 96) and frame.mask.dtype == np.uint8
    assert not frame.defective and frame.defect is None and not frame.mask.any()
    assert frame.image.flags["C_CONTIGUOUS"]
    # A real image, not a flat field: a bright part on a darker belt.
    center = frame.image[40:56, 10:20].mean()   # on the washer's ring
    corner = frame.image[:8, :8].mean()         # belt
    assert center > corner + 50


def test_defect_rate_is_respected() -> None:
    cam = SyntheticCamera("nut", size=64, seed=3, defect_rate=0.2)
    flags = [cam.is_defective(i) for i in range(1000)]
    assert 0.16 < np.mean(flags) < 0.24
    assert [cam.render(i).defective for i in range(40)] == flags[:40]
    kinds = {cam.render(i).defect for i in range(300) if flags[i]}
    assert kinds == set(DEFECT_KINDS)
    assert not any(SyntheticCamera("nut", 64, 3, 0.0).is_defective(i) for i in range(200))
    assert all(SyntheticCamera("nut", 64, 3, 1.0).render(i).defective for i in range(20))


@pytest.mark.parametrize("product", sorted(PRODUCTS))
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_changes_pixels_where_the_mask_says(product: str, kind: str) -> None:
    cam = SyntheticCamera(product, size=256, seed=1)
    for index in range(5):
        good = cam.render(index, defect=None)
        bad = cam.render(index, defect=kind)  # same pose and lighting; only the defect (and noise) differ
        assert bad.defective and bad.defect == kind and not good.mask.any()
        mask = bad.mask > 0
        assert set(np.unique(bad.mask)) == {0, 255}
        assert 15 < mask.sum() < 0.1 * mask.size, f"{kind} mask of {mask.sum()} pixels"
        diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16)).max(axis=2)
        changed = diff > 25  # noise is sigma 2.5, so this is a real change
        near_mask = cv2.dilate(bad.mask, np.ones((7, 7), np.uint8)) > 0
        assert changed.sum() > 8, f"{kind} at frame {index} barely visible"
        assert (changed & ~near_mask).sum() <= 0.02 * changed.sum(), f"{kind} changed pixels off its mask"
        assert diff[mask].mean() > 12, f"{kind} at frame {index}: mean change {diff[mask].mean():.1f}"


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_mean_deviation_detector_separates_defects(product: str) -> None:
    """The brief's visibility bar: a per-pixel deviation-from-mean detector fit on 50 good parts."""
    cam = SyntheticCamera(product, size=256, seed=11, defect_rate=0.5)
    normals = np.stack([cam.render(i, defect=None).image for i in range(50)]).astype(np.float32)
    mean, std = normals.mean(axis=0), normals.std(axis=0)

    def score(image: np.ndarray) -> float:
        deviation = (np.abs(image.astype(np.float32) - mean) / (std + 4.0)).mean(axis=2)
        return float(cv2.blur(deviation, (5, 5)).max())

    mixed = [cam.render(i) for i in range(1000, 1040)]
    labels = np.array([f.defective for f in mixed])
    assert 8 <= labels.sum() <= 32, "the 40 mixed frames need both classes"
    scores = np.array([score(f.image) for f in mixed])
    auc = auroc(scores[~labels], scores[labels])
    assert auc > 0.95, f"{product}: AUROC {auc:.3f}"


def test_write_mvtec_layout(tmp_path) -> None:
    cam = SyntheticCamera("bolt", size=64, seed=2)
    counts = cam.write_mvtec(tmp_path / "bolt", n_train=4, n_test_good=3, n_test_defect=7)
    root = tmp_path / "bolt"
    assert counts["train/good"] == 4 and counts["test/good"] == 3
    assert sum(n for k, n in counts.items() if k.startswith("test/") and k != "test/good") == 7
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    for kind in DEFECT_KINDS:
        images = sorted(p.stem for p in (root / "test" / kind).glob("*.png"))
        masks = sorted(p.stem for p in (root / "ground_truth" / kind).glob("*.png"))
        assert images and masks == [f"{name}_mask" for name in images]
        mask = np.asarray(Image.open(root / "ground_truth" / kind / f"{images[0]}_mask.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert not (root / "ground_truth" / "good").exists()
    # Train and test draw from different frames: no test image repeats a train image.
    train = {np.asarray(Image.open(p)).tobytes() for p in (root / "train" / "good").iterdir()}
    test = {np.asarray(Image.open(p)).tobytes() for p in (root / "test").rglob("*.png")}
    assert not train & test
    # The layout replays through FolderSource with ground truth.
    replayed = list(FolderSource(root))
    assert len(replayed) == 10
    assert sum(item.meta["gt_defective"] for item in replayed) == 7
    assert {item.meta["defect"] for item in replayed} == {"good", *DEFECT_KINDS}


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown synthetic product"):
        SyntheticCamera("gearbox")
    with pytest.raises(ValueError, match="defect_rate"):
        SyntheticCamera(defect_rate=1.5)
    with pytest.raises(ValueError, match="unknown defect kind"):
        SyntheticCamera().render(0, defect="rust")
