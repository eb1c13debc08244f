"""``lineguard eval`` and ``lineguard export --int8`` on a small generated MVTec folder.

Uses the baseline engine (numpy, trains in a second) so these run without
torch; the metrics code and the ONNX scoring path are the same for every
engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_images import write_mvtec

from lineguard.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = write_mvtec(root / "data", n_train=12, n_good=4, n_defect=3, size=96)
    model = root / "model"
    assert main(["train", "--model", "baseline", "--data", str(data), "--out", str(model), "--size", "96"]) == 0
    return data, model


def test_eval_writes_json_markdown_and_sheet(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    out_json, out_md, out_png = tmp_path / "m.json", tmp_path / "m.md", tmp_path / "sheet.png"
    assert main(["eval", "--model", str(model), "--data", str(data), "--out", str(out_json),
                 "--markdown", str(out_md), "--sheet", str(out_png), "--batch", "4"]) == 0
    report = json.loads(out_json.read_text())
    for key in ("image_auroc", "pixel_auroc", "pro", "f1_max", "per_defect", "n_images", "images_per_s"):
        assert key in report, key
    assert report["n_images"] == 4 + 2 * 3
    assert set(report["per_defect"]) == {"blob", "scratch"}
    assert report["per_defect"]["blob"]["n_images"] == 4 + 3
    for value in (report["image_auroc"], report["pixel_auroc"], report["pro"], report["f1_max"]):
        assert 0.0 <= value <= 1.0
    # The defects are pasted colour blobs and white scratches on a fixed pattern: even the baseline finds them.
    assert report["image_auroc"] > 0.9 and report["pixel_auroc"] > 0.9
    assert report["images_per_s"] > 0
    table = out_md.read_text()
    assert "| blob | 7 |" in table and "**overall**" in table
    import cv2

    sheet = cv2.imread(str(out_png))
    assert sheet is not None and sheet.shape[0] > 0 and sheet.std() > 0


def test_eval_without_masks_gives_null_pixel_metrics(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    data, model = trained
    no_masks = tmp_path / "data"
    shutil.copytree(data, no_masks)
    shutil.rmtree(no_masks / "ground_truth")
    out_json = tmp_path / "m.json"
    assert main(["eval", "--model", str(model), "--data", str(no_masks), "--out", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["pixel_auroc"] is None and report["pro"] is None
    assert report["image_auroc"] is not None


def test_export_int8_then_eval_int8(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from lineguard.engines.manifest import Manifest
    from lineguard.engines.runtime import ScoringEngine

    data, model = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    # The baseline graph has no Conv to quantise: the command must still write a valid graph that the engine
    # loads, and record what it did in the manifest (tests/test_patchcore.py quantises a real backbone).
    assert main(["export", "--model", str(copy), "--int8", "--data", str(data), "--calibration-images", "4"]) == 0
    assert (copy / "model.int8.onnx").exists()
    info = Manifest.load(copy).extra["int8"]
    assert info["calibration_images"] == 4 and len(info["sha256"]) == 64
    engine = ScoringEngine(copy, onnx_file="model.int8.onnx")
    scores, maps = engine.score(np.zeros((2, 96, 96, 3), np.uint8))
    assert scores.shape == (2,) and maps.shape == (2, 1, 96, 96)
