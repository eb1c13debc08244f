"""``lineguard export --fp16``: the FP16 graph, its own threshold and parity with FP32, and scoring with it.

The FP16 graph runs on the CPU provider (ONNX Runtime casts around the FP16 kernels it lacks), so parity is
checked here on a small generated MVTec folder with the baseline engine (numpy, no torch); PatchCore's FP16
export is checked in tests/test_patchcore.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_images import write_mvtec

from lineguard.cli import main
from lineguard.config import ProcessorConfig
from lineguard.engines import data as datasets
from lineguard.engines.data import load_rgb
from lineguard.engines.manifest import FP16_FILE, INT8_FILE, ONNX_FILE, Manifest
from lineguard.engines.runtime import ScoringEngine
from lineguard.inspection import ModelRegistry

pytest.importorskip("onnxconverter_common")

# FP16 keeps 11 significant bits: scores of this model stay within 1% of FP32's (measured: 0.07% at most).
SCORE_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("fp16")
    data = write_mvtec(root / "data", n_train=12, n_good=6, n_defect=4, size=96)
    model = root / "models" / "widget"
    assert main(["train", "--model", "baseline", "--data", str(data), "--out", str(model), "--size", "96"]) == 0
    return data, model


def test_export_fp16_records_its_threshold_and_parity(exported, capsys) -> None:
    data, model = exported
    assert main(["export", "--model", str(model), "--fp16", "--data", str(data), "--calibration-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert "verdicts differing from FP32: 0" in printed
    info = Manifest.load(model).extra["fp16"]
    assert info["file"] == FP16_FILE and (model / FP16_FILE).exists()
    assert info["keep_fp32"] == "head" and info["calibration_images"] == 8
    assert info["threshold"] == pytest.approx(Manifest.load(model).thresholds.value * info["threshold_scale"])
    assert abs(info["threshold_scale"] - 1.0) < SCORE_TOLERANCE
    parity = info["test_parity"]
    assert parity["images"] == 6 + 2 * 4 and parity["verdicts_differing"] == 0
    assert parity["score_relative_diff_max_abs"] < SCORE_TOLERANCE
    # The manifest vouches for the new file too (the registry verifies every file before loading).
    Manifest.load(model).verify(model)


def test_fp16_scores_within_tolerance_and_same_verdicts(exported) -> None:
    data, model = exported
    if not (model / FP16_FILE).exists():
        main(["export", "--model", str(model), "--fp16", "--data", str(data), "--skip-test-parity"])
    fp32 = ScoringEngine(model)
    fp16 = ScoringEngine(model, onnx_file=FP16_FILE)
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    assert fp16.threshold == Manifest.load(model).extra["fp16"]["threshold"] != fp32.threshold
    images = [load_rgb(s.path) for s in datasets.test_samples(data)]
    scores32, maps32 = fp32.score(images)
    scores16, maps16 = fp16.score(images)
    assert maps16.dtype == np.float32 and maps16.shape == maps32.shape  # keep_io_types: float32 outside
    np.testing.assert_allclose(scores16, scores32, rtol=SCORE_TOLERANCE)
    assert ((scores16 > fp16.threshold) == (scores32 > fp32.threshold)).all()


def test_int8_and_fp16_share_the_calibration_record(exported, tmp_path) -> None:
    data, model = exported
    copy = tmp_path / "widget"
    shutil.copytree(model, copy)
    assert main(["export", "--model", str(copy), "--int8", "--fp16", "--data", str(data),
                 "--calibration-images", "4", "--skip-test-parity"]) == 0
    extra = Manifest.load(copy).extra
    shared = {"file", "sha256", "calibration_images", "calibration_data", "score_relative_diff_mean",
              "score_relative_diff_median_abs", "score_relative_diff_max_abs", "threshold_scale", "threshold"}
    assert shared <= set(extra["int8"]) and shared <= set(extra["fp16"])
    assert (extra["int8"]["file"], extra["fp16"]["file"]) == (INT8_FILE, FP16_FILE)
    assert "test_parity" not in extra["fp16"]


def test_registry_scores_with_the_fp16_graph_and_its_threshold(exported, tmp_path) -> None:
    data, model = exported
    if not (model / FP16_FILE).exists():
        main(["export", "--model", str(model), "--fp16", "--data", str(data), "--skip-test-parity"])
    shutil.copytree(model, tmp_path / "widget")
    shutil.copytree(model, tmp_path / "gear", ignore=shutil.ignore_patterns(FP16_FILE))
    gear = Manifest.load(tmp_path / "gear")
    gear.extra.pop("fp16")
    gear.save(tmp_path / "gear")
    config = ProcessorConfig(model_dir=tmp_path, precision="fp16", inference_threads=1,
                             batching_per_product={"widget": {"max_batch": 4}})
    registry = ModelRegistry.from_config(config)  # what the processors and the API build
    widget = registry.get("widget", "line1").engine
    assert widget.onnx_file == FP16_FILE and widget.precision == "fp16" and widget.max_batch == 4
    assert widget.threshold == json.loads((model / "manifest.json").read_text())["extra"]["fp16"]["threshold"]
    gear_engine = registry.get("gear", "line1").engine
    assert gear_engine.onnx_file == ONNX_FILE and gear_engine.max_batch == 16  # no FP16 graph: FP32, with a warning


def test_head_stays_fp32_where_the_graph_has_a_backbone_scope() -> None:
    from onnx import helper

    from lineguard.engines.fp16 import fp32_nodes

    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["f"], name="/feature_extractor/conv"),
                               helper.make_node("MatMul", ["f", "bank"], ["d"], name="/memory/distance"),
                               helper.make_node("ReduceMin", ["d"], ["s"], name="/score/min")], "g", [], [])
    assert fp32_nodes(graph, "head") == ["/memory/distance", "/score/min"]
    assert fp32_nodes(graph, "none") == []
    flat = helper.make_graph([helper.make_node("Sub", ["x", "mu"], ["c"], name="centre")], "g", [], [])
    assert fp32_nodes(flat, "head") == []  # no backbone scope: the whole graph converts
