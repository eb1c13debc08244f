"""SimpleNet on small generated images: the loss, the flat training path, fit, ONNX parity, the train CLI,
``lineguard eval`` and ``lineguard bench engine`` on its model folder.

Everything runs at 64 px for 150 steps on cached features (about a second of training) with a larger noise
than the paper's (0.1 against 0.015) so it converges that fast: these check the plumbing and the maths of the
pieces, not detection quality on real parts (docs/engines.md says what is measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from engine_images import defect_image, needs_weights, normal_image, write_mvtec  # noqa: E402

needs_mobilenet = needs_weights("mobilenet_v2")

SIZE = 64
FAST = {"steps": 150, "batch_size": 2, "noise_std": 0.1, "progress": False}


# ---------------------------------------------------------------- pure pieces (no backbone needed)
def test_truncated_l1_loss_has_the_papers_margins() -> None:
    from lineguard.engines.simplenet.train import truncated_l1_loss

    # Normal scores at or above +0.5 and perturbed ones at or below -0.5 cost nothing.
    assert truncated_l1_loss(torch.tensor([0.5, 2.0]), torch.tensor([-0.5, -3.0])).item() == 0.0
    # Otherwise the distance to the margin, averaged per side: (0.5 - 0.0) / 2 + (0.5 + 0.5) / 2.
    assert truncated_l1_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.5, -1.0])).item() == pytest.approx(0.75)


def test_flat_training_path_is_the_exported_convolutions() -> None:
    from lineguard.engines.simplenet.torch_model import Discriminator

    torch.manual_seed(0)
    disc = Discriminator(16, 32)
    x = torch.randn(64, 16)
    disc.train()
    disc.forward_flat(x)  # one training step's statistics update, as a 1x1 convolution's BatchNorm would
    ref = Discriminator(16, 32)
    ref.load_state_dict({k: v for k, v in disc.state_dict().items() if "running" not in k and "tracked" not in k},
                        strict=False)
    ref.train()
    ref(x[:, :, None, None])
    torch.testing.assert_close(disc.body[1].running_mean, ref.body[1].running_mean)
    torch.testing.assert_close(disc.body[1].running_var, ref.body[1].running_var)
    disc.eval()
    torch.testing.assert_close(disc.forward_flat(x), disc(x[:, :, None, None]).flatten(), rtol=1e-5, atol=1e-5)


def test_unknown_option_is_rejected() -> None:
    from lineguard.engines.simplenet.model import build_model

    with pytest.raises(ValueError, match="unknown simplenet options"):
        build_model(noise=0.1)


# ---------------------------------------------------------------- with the backbone
@pytest.fixture(scope="module")
def fitted():
    from lineguard.engines.simplenet.model import build_model

    rng = np.random.default_rng(0)
    return build_model(input_size=SIZE, **FAST).fit([normal_image(rng, SIZE) for _ in range(12)])


@needs_mobilenet
def test_fit_trains_on_cached_patch_features(fitted) -> None:
    extra = fitted.manifest_extra
    assert extra["grid_size"] == [8, 8] and extra["n_patches"] == 12 * 8 * 8  # 64 px / stride 8
    assert extra["embedding_dim"] == 128  # features.6 (32) + features.13 (96)
    training = extra["training"]
    assert training["steps"] == 150 and training["patches_per_step"] == 2 * 64
    assert training["loss_last_epoch_mean"] < 0.5 * training["loss_first"]
    # The backbone stayed frozen: its BatchNorm statistics are the pretrained ones.
    assert not any(p.requires_grad for p in fitted.model.feature_extractor.parameters())
    assert not fitted.model.feature_extractor.training


@needs_mobilenet
def test_defects_score_above_normal_images(fitted) -> None:
    rng = np.random.default_rng(123)
    normals = [normal_image(rng, SIZE) for _ in range(6)]
    defects, masks = zip(*(defect_image(rng, SIZE, kind) for kind in ("blob", "scratch") * 3))
    normal_scores, normal_maps = fitted.score(normals)
    defect_scores, defect_maps = fitted.score(list(defects))
    assert normal_maps.shape == (6, 1, SIZE, SIZE)
    np.testing.assert_allclose(normal_scores, normal_maps.reshape(6, -1).max(axis=1), rtol=1e-6)  # max of the map
    assert defect_scores.min() > normal_scores.max()
    for amap, mask in zip(defect_maps[:, 0], masks):
        assert amap[mask > 0].mean() > amap[mask == 0].mean()


@needs_mobilenet
def test_onnx_export_parity_with_dynamic_batch(fitted, tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    images = [normal_image(rng, SIZE) for _ in range(3)] + [defect_image(rng, SIZE)[0] for _ in range(2)]
    path = tmp_path / "model.onnx"
    fitted.export_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensor = fitted.preprocess(images)
    torch_scores, torch_maps = fitted.score(images)
    for batch in (tensor, tensor[:1]):  # the batch axis is dynamic
        scores, maps = session.run(["score", "anomaly_map"], {"image": batch})
        n = len(batch)
        assert scores.shape == (n,) and maps.shape == (n, 1, SIZE, SIZE)
        np.testing.assert_allclose(scores, torch_scores[:n], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(maps, torch_maps[:n], rtol=1e-4, atol=1e-4 * float(np.abs(torch_maps).max()))


@needs_mobilenet
def test_train_cli_then_eval_and_bench_engine(tmp_path: Path) -> None:
    from lineguard.cli import main
    from lineguard.engines.runtime import ScoringEngine

    data = write_mvtec(tmp_path / "data", n_train=12, n_good=4, n_defect=2, size=SIZE)
    out = tmp_path / "model"
    options = [x for key, value in FAST.items() for x in ("--option", f"{key}={json.dumps(value)}")]
    assert main(["train", "--model", "simplenet", "--data", str(data), "--out", str(out), "--size", str(SIZE),
                 *options]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "simplenet"
    assert manifest["backbone"]["name"] == "mobilenet_v2"
    assert manifest["backbone"]["layers"] == ["features.6", "features.13"]
    assert manifest["extra"]["noise_std"] == 0.1 and manifest["extra"]["training"]["steps"] == 150
    # Calibrated on the held-out normal images, as the other engines.
    assert manifest["thresholds"]["method"] == "normal_quantile"
    assert manifest["training"]["n_calibration"] >= 1
    engine = ScoringEngine(out)
    rng = np.random.default_rng(5)
    normals = [normal_image(rng, SIZE) for _ in range(3)]
    defects = [defect_image(rng, SIZE, kind)[0] for kind in ("blob", "scratch", "blob")]
    scores, maps = engine.score(normals + defects)
    assert scores.shape == (6,) and maps.shape == (6, 1, SIZE, SIZE)
    assert scores[3:].min() > scores[:3].max()

    report_path = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--data", str(data), "--out", str(report_path), "--batch", "4"]) == 0
    report = json.loads(report_path.read_text())
    assert report["kind"] == "simplenet" and report["n_images"] == 4 + 2 * 2
    assert report["image_auroc"] > 0.9 and report["pixel_auroc"] > 0.9

    bench_path = tmp_path / "engine.json"
    assert main(["bench", "engine", "--model", str(out), "--batches", "1,2", "--seconds", "0.2",
                 "--out", str(bench_path)]) == 0
    (one,) = json.loads(bench_path.read_text())["models"]
    assert one["kind"] == "simplenet"
    assert one["batches"]["2"]["images_per_s"] > 0 and one["batches"]["2"]["ceiling_images_per_s"] > 0
