"""PatchCore on generated textures: fit, ONNX export parity, defects outscore normal images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

from engine_images import defect_image, needs_weights, normal_image, write_mvtec  # noqa: E402

needs_mobilenet = needs_weights("mobilenet_v2")

SIZE = 96


@pytest.fixture(scope="module")
def fitted():
    from lineguard.engines.patchcore.model import build_model

    rng = np.random.default_rng(0)
    train = [normal_image(rng, SIZE) for _ in range(20)]
    # 10% of 20 x 12 x 12 patches: a bank of 288, enough for these small images.
    model = build_model(input_size=SIZE, coreset_ratio=0.1, progress=False).fit(train)
    return model, rng


@needs_mobilenet
def test_fit_builds_a_coreset_bank(fitted) -> None:
    model, _ = fitted
    extra = model.manifest_extra
    assert extra["n_patches"] == 20 * 12 * 12  # 96 px / stride 8
    assert extra["memory_bank_size"] == round(0.1 * extra["n_patches"])
    bank = model.model.memory_bank
    assert tuple(bank.shape) == (extra["memory_bank_size"], 128)
    # Every bank entry's nearest neighbour is itself.
    assert (model.model.bank_neighbors[:, 0] == np.arange(len(bank))).all()


@needs_mobilenet
def test_defects_score_above_normal_images(fitted) -> None:
    model, _ = fitted
    rng = np.random.default_rng(123)
    normals = [normal_image(rng, SIZE) for _ in range(6)]
    defects, masks = zip(*(defect_image(rng, SIZE, kind) for kind in ("blob", "scratch") * 3))
    normal_scores, normal_maps = model.score(normals)
    defect_scores, defect_maps = model.score(list(defects))
    assert normal_maps.shape == (6, 1, SIZE, SIZE)
    assert defect_scores.min() > normal_scores.max()
    # The map is highest inside the defect.
    for amap, mask in zip(defect_maps[:, 0], masks):
        assert amap[mask > 0].mean() > amap[mask == 0].mean() * 1.5


@needs_mobilenet
def test_onnx_export_parity_with_dynamic_batch(fitted, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, _ = fitted
    rng = np.random.default_rng(7)
    images = [normal_image(rng, SIZE) for _ in range(3)] + [defect_image(rng, SIZE)[0] for _ in range(2)]
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensor = model.preprocess(images)
    torch_scores, torch_maps = model.score(images)
    for batch in (tensor, tensor[:1]):  # the batch axis is dynamic
        scores, maps = session.run(["score", "anomaly_map"], {"image": batch})
        n = len(batch)
        np.testing.assert_allclose(scores, torch_scores[:n], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(maps, torch_maps[:n], rtol=1e-4, atol=1e-4 * float(np.abs(torch_maps).max()))


@needs_mobilenet
def test_train_cli_writes_manifest_with_backbone(tmp_path: Path) -> None:
    from lineguard.cli import main
    from lineguard.engines.runtime import ScoringEngine

    data = write_mvtec(tmp_path / "data", n_train=10, size=SIZE)
    out = tmp_path / "model"
    assert main(["train", "--model", "patchcore", "--data", str(data), "--out", str(out), "--size", str(SIZE),
                 "--option", "coreset_ratio=0.1", "--option", "progress=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "patchcore"
    assert manifest["backbone"]["name"] == "mobilenet_v2"
    assert manifest["backbone"]["layers"] == ["features.6", "features.13"]
    assert len(manifest["backbone"]["weights_sha256"]) == 64
    assert manifest["extra"]["coreset_ratio"] == 0.1
    engine = ScoringEngine(out)
    rng = np.random.default_rng(5)
    normals = [normal_image(rng, SIZE) for _ in range(4)]
    defects = [defect_image(rng, SIZE, kind)[0] for kind in ("blob", "scratch", "blob", "scratch")]
    scores, maps = engine.score(normals + defects)
    assert scores.shape == (8,) and maps.shape == (8, 1, SIZE, SIZE)
    assert scores[4:].min() > scores[:4].max()

    # INT8: only the backbone is quantised; the ranking of normal vs defective images must survive.
    assert main(["export", "--model", str(out), "--int8", "--calibration-images", "8"]) == 0
    info = json.loads((out / "manifest.json").read_text())["extra"]["int8"]
    assert info["quantised_nodes"] > 30 and info["reduce_range"] is True
    int8 = ScoringEngine(out, onnx_file="model.int8.onnx")
    # The INT8 graph runs with the FP32 threshold rescaled by the measured INT8/FP32 score ratio.
    assert int8.threshold == pytest.approx(engine.threshold * info["threshold_scale"])
    assert info["threshold_scale"] != 1.0
    int8_scores, _ = int8.score(normals + defects)
    assert int8_scores[4:].min() > int8_scores[:4].max()
    assert np.abs(int8_scores / scores - 1.0).max() < 0.5

    # FP16: the backbone in FP16, the memory-bank distance and the map float32 (--fp16-keep-fp32 head).
    assert main(["export", "--model", str(out), "--fp16", "--calibration-images", "8"]) == 0
    info = json.loads((out / "manifest.json").read_text())["extra"]["fp16"]
    assert info["fp32_nodes"] > 0 and info["test_parity"]["verdicts_differing"] == 0
    fp16 = ScoringEngine(out, onnx_file="model.fp16.onnx")
    assert fp16.threshold == pytest.approx(engine.threshold * info["threshold_scale"])
    fp16_scores, _ = fp16.score(normals + defects)
    assert fp16_scores[4:].min() > fp16_scores[:4].max()
    assert np.abs(fp16_scores / scores - 1.0).max() < 0.02


def test_unknown_option_is_rejected() -> None:
    from lineguard.engines.patchcore.model import build_model

    with pytest.raises(ValueError, match="unknown patchcore options"):
        build_model(coreset_percent=1)


@pytest.mark.parametrize("grid, size", [((32, 32), (256, 256)), ((12, 15), (96, 120)), ((30, 7), (224, 64))])
def test_anomaly_map_matrices_equal_upsampling_then_blur(grid, size) -> None:
    import torch
    import torch.nn.functional as F

    from lineguard.engines.patchcore.anomaly_map import AnomalyMapGenerator, gaussian_kernel_1d

    # The reference: the two operations as PatchCore states them, on whole maps.
    kernel = gaussian_kernel_1d(4.0)
    r = (kernel.numel() - 1) // 2
    scores = torch.rand(3, 1, *grid, dtype=torch.float64) * 5
    up = F.interpolate(scores, size=size, mode="nearest")
    up = F.conv2d(F.pad(up, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    expected = F.conv2d(F.pad(up, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))

    got = AnomalyMapGenerator(grid, size)(scores.to(torch.float32))
    assert got.shape == (3, 1, *size)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)
