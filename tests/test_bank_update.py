"""Learning from feedback: confirmed-good images added to a PatchCore memory bank without a refit.

The "new normal variation" is the generated part darker and with finer stripes: normal by construction,
but unlike anything the model was fitted on, so it scores high (a false alarm) until it is learnt.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine_images import needs_weights, normal_image, write_mvtec

SIZE = 96


def variant_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A good part under other lighting, on another fixture: darker, stripes at another pitch."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.3 + 0.15 * np.sin(xx / 1.7 + yy / 2.3)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 2.0)
    gray = stripes + 0.05 * noise
    return (np.clip(np.stack([gray, gray * 0.95, gray * 1.1], axis=2), 0.0, 1.0) * 255).astype(np.uint8)


def write_images(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image[:, :, ::-1])
    return folder


def test_extend_coreset_picks_only_what_the_bank_does_not_cover() -> None:
    from lineguard.engines.common.coreset import coverage_radius_sq, extend_coreset

    # A bank on a unit grid: its entries are 1 apart, so it covers what lies within 1 of it.
    bank = np.array([[x, y] for x in range(4) for y in range(4)], dtype=np.float32)
    assert coverage_radius_sq(bank) == pytest.approx(1.0)
    near = bank[:5] + 0.3  # inside the grid's cells: covered
    far = np.array([[10, 10], [10.2, 10], [20, 0]], dtype=np.float32)  # two clusters outside it
    picks, figures = extend_coreset(bank, np.r_[near, far], max_picks=10, projection_dim=None, progress=False)
    # The farthest first; [10.2, 10] is then within the radius of [10, 10]: two picks, no near one.
    assert sorted(picks.tolist()) in ([5, 7], [6, 7])
    assert figures["uncovered_patches_before"] == 3 and figures["max_distance_after"] <= 1.0
    assert extend_coreset(bank, near, max_picks=10, projection_dim=None, progress=False)[0].size == 0
    # The budget caps the picks.
    assert extend_coreset(bank, far, max_picks=1, projection_dim=None, progress=False)[0].tolist() == [2]


@needs_weights("mobilenet_v2")
def test_bank_update_cli_writes_a_new_version_that_learnt_the_images(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    from lineguard.cli import main
    from lineguard.engines.patchcore.update import load_fitted, read_memory_bank
    from lineguard.engines.runtime import ScoringEngine

    data = write_mvtec(tmp_path / "data", n_train=10, size=SIZE)
    parent = tmp_path / "v1"
    assert main(["train", "--model", "patchcore", "--data", str(data), "--out", str(parent), "--size", str(SIZE),
                 "--version", "1", "--option", "coreset_ratio=0.1", "--option", "progress=false"]) == 0
    parent_files = {p.name: p.read_bytes() for p in parent.iterdir()}
    rng = np.random.default_rng(11)
    added = [variant_image(rng) for _ in range(4)]
    unseen = [variant_image(rng) for _ in range(4)]  # same variation, not added
    add_dir = write_images(tmp_path / "confirmed_good", added)
    old = ScoringEngine(parent)
    old_added, _ = old.score(added)
    old_unseen, _ = old.score(unseen)
    assert (old_unseen > old.threshold).all()  # the variation is a false alarm before the update

    out = tmp_path / "v2"
    capsys.readouterr()
    assert main(["models", "update-bank", "--model", str(parent), "--add", str(add_dir), "--out", str(out),
                 "--version", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("update-bank: ") and "parent=1" in printed

    # The parent is untouched; the new folder is a complete, verified model.
    assert {p.name: p.read_bytes() for p in parent.iterdir()} == parent_files
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == "2" and manifest["name"] == "v1"
    (lineage,) = manifest["extra"]["lineage"]
    assert lineage["method"] == "patchcore_bank_update"
    assert (lineage["parent_version"], lineage["images_added"]) == ("1", 4)
    assert lineage["parent_onnx_sha256"] == json.loads((parent / "manifest.json").read_text())["onnx_sha256"]
    assert lineage["images_dir"] == str(add_dir) and len(lineage["images_sha256"]) == 64
    # The patches were appended: the old bank is the new one's first rows.
    old_bank, new_bank = read_memory_bank(parent / "model.onnx"), read_memory_bank(out / "model.onnx")
    assert 0 < lineage["patches_added"] <= lineage["max_picks"] == round(0.1 * 4 * 12 * 12)
    assert len(new_bank) == len(old_bank) + lineage["patches_added"] == manifest["extra"]["memory_bank_size"]
    np.testing.assert_array_equal(new_bank[:len(old_bank)], old_bank)
    # The held-out normals were found again (same data, fingerprint, split): recalibrated on them.
    assert lineage["threshold"]["action"].startswith("recalibrated on the parent's 2 held-out")
    assert lineage["threshold"]["n_calibration"] == 2

    new = ScoringEngine(out)
    assert new.threshold == pytest.approx(lineage["threshold"]["value"])
    new_added, _ = new.score(added)
    new_unseen, _ = new.score(unseen)
    assert (new_added < old_added).all() and (new_unseen < old_unseen).all()
    assert lineage["added_images_score"]["after_max"] == pytest.approx(float(new_added.max()), rel=1e-5)

    # Export parity: the updated graph against the torch model rebuilt from the new folder.
    model, _ = load_fitted(out)
    images = added[:2] + unseen[:2] + [normal_image(rng, SIZE)]
    torch_scores, torch_maps = model.score(images)
    onnx_scores, onnx_maps = new.score(images)
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4, atol=1e-6)
    # Maps of images not added: an added image's patches are now bank entries, at distance ~0, where the
    # square root of ||a||^2 - 2ab + ||b||^2 turns float rounding into map noise (in torch and ONNX alike).
    np.testing.assert_allclose(onnx_maps[2:], torch_maps[2:], rtol=1e-4,
                               atol=1e-4 * float(np.abs(torch_maps).max()))

    # A second update chains the lineage; images the bank covers add nothing.
    again = tmp_path / "v3"
    assert main(["models", "update-bank", "--model", str(out), "--add", str(add_dir), "--out", str(again),
                 "--version", "3"]) == 0
    chain = json.loads((again / "manifest.json").read_text())["extra"]["lineage"]
    assert [e["parent_version"] for e in chain] == ["1", "2"] and chain[1]["patches_added"] == 0

    # A new folder is required, and the threshold is kept (and says why) where the held-out images are gone.
    assert main(["models", "update-bank", "--model", str(out), "--add", str(add_dir), "--out", str(out)]) == 2
    moved = tmp_path / "data-moved"
    data.rename(moved)
    kept = tmp_path / "v4"
    assert main(["models", "update-bank", "--model", str(out), "--add", str(add_dir), "--out", str(kept)]) == 0
    entry = json.loads((kept / "manifest.json").read_text())["extra"]["lineage"][-1]
    assert entry["threshold"]["action"].startswith("kept the parent's: the training data")
    assert entry["threshold"]["value"] == entry["threshold"]["parent_value"] == new.threshold


@needs_weights("mobilenet_v2")
def test_bench_bank_update_prints_the_three_models_side_by_side(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    from lineguard.cli import main

    data = write_mvtec(tmp_path / "data", n_train=20, size=SIZE)
    out = tmp_path / "bank-update.json"
    assert main(["bench", "bank-update", "--data", str(data), "--size", str(SIZE), "--coreset-ratio", "0.1",
                 "--slice", "random", "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads(printed[-1])
    assert {"false_alarm_rate_held_before", "false_alarm_rate_held_after", "image_auroc_before",
            "image_auroc_after", "image_auroc_refit", "update_s", "refit_s"} <= set(summary)
    assert [line.split("|")[1].strip() for line in printed if line.startswith(("| base", "| updated", "| refit"))] \
        == ["base", "updated", "refit"]
    result = json.loads(out.read_text())
    assert (result["n_rest"], result["n_added"], result["n_held"]) == (16, 2, 2)
    assert out.with_suffix(".md").exists()
    # The update learnt from the added half only, on top of the base model's bank.
    assert result["models"]["updated"]["memory_bank_size"] == result["update"]["bank_size_after"]
    assert result["update"]["bank_size_before"] == result["models"]["base"]["memory_bank_size"]
