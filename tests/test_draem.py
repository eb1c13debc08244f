"""DRAEM on small generated images: the anomaly synthesiser, the losses, training -> model folder, ONNX parity.

Training runs at 32-64 px with narrow networks for a few steps: these check the plumbing and the maths
of the pieces, not detection quality (docs/engines.md says what was measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from engine_images import normal_image, write_mvtec  # noqa: E402

TINY = dict(recon_width=4, disc_width=4, smooth_kernel=5, batch_size=2, progress=False, threads=1)


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [normal_image(rng, size) for _ in range(n)]


# ---------------------------------------------------------------- the anomaly synthesiser
def test_perlin_noise_is_seeded_bounded_and_any_size():
    from lineguard.engines.draem.train import fractal_perlin, perlin

    a = perlin((50, 70), (4, 8), np.random.default_rng(1))
    b = perlin((50, 70), (4, 8), np.random.default_rng(1))
    assert a.shape == (50, 70) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 + 1e-5 and a.std() > 0.05
    # Zero at the lattice points (the gradient noise's defining property): cells of 64 / 4 = 16 px.
    c = perlin((64, 64), (4, 4), np.random.default_rng(2))
    np.testing.assert_allclose(c[::16, ::16], 0.0, atol=1e-6)
    f = fractal_perlin((64, 64), (2, 2), np.random.default_rng(3))
    assert f.shape == (64, 64) and np.isfinite(f).all()


def test_perlin_masks_are_binary_and_cover_a_plausible_share():
    from lineguard.engines.draem.train import perlin_mask

    rng = np.random.default_rng(0)
    masks = np.stack([perlin_mask((64, 64), rng) for _ in range(200)])
    assert set(np.unique(masks)) <= {0.0, 1.0}
    coverage = masks.mean(axis=(1, 2))
    # Thresholding noise in about [-1, 1] at 0.5 leaves a minority of pixels: some masks empty (as in the
    # paper), most partial, none whole.
    assert 0.03 < coverage.mean() < 0.3, coverage.mean()
    assert (coverage > 0).mean() > 0.5
    assert coverage.max() < 0.9
    # Large cells give few big blobs, small cells many small ones: coverage varies from mask to mask.
    assert coverage.std() > 0.02


def test_blend_keeps_outside_pixels_and_mixes_inside_with_opacity_beta():
    from lineguard.engines.draem.train import blend

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
    texture = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[4:10, 2:8] = 1
    out = blend(image, texture, mask, beta=0.3)
    inside = mask.astype(bool)
    np.testing.assert_array_equal(out[~inside], image[~inside])
    np.testing.assert_allclose(out[inside], 0.7 * texture[inside] + 0.3 * image[inside], rtol=1e-6)
    np.testing.assert_allclose(blend(image, texture, mask, beta=0.0)[inside], texture[inside])


@pytest.mark.parametrize("texture", ["procedural", "self", "mixed"])
def test_synthesiser_batches_anomalies_only_under_their_masks(texture: str):
    from lineguard.engines.draem.train import AnomalySynthesiser

    images = np.stack(_images(4, 32))
    synth = AnomalySynthesiser(images, texture=texture, anomaly_prob=0.5)
    rng = np.random.default_rng(0)
    clean, augmented, masks = synth.batch(np.arange(64) % 4, rng)
    assert clean.shape == augmented.shape == (64, 3, 32, 32) and masks.shape == (64, 1, 32, 32)
    assert clean.dtype == augmented.dtype == masks.dtype == np.float32
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    outside = np.broadcast_to(masks == 0, clean.shape)
    np.testing.assert_array_equal(augmented[outside], clean[outside])
    has = masks.reshape(64, -1).max(axis=1) > 0
    assert 0.2 < has.mean() < 0.8  # about half get an anomaly (a few drawn masks come out empty)
    changed = np.abs(augmented - clean).reshape(64, -1).max(axis=1) > 1e-3
    assert changed[has].mean() > 0.9 and not changed[~has].any()


def test_textures_are_images_in_range_and_differ_by_source():
    from lineguard.engines.draem.train import procedural_texture, self_texture

    rng = np.random.default_rng(0)
    images = np.stack(_images(3, 32))
    for t in [procedural_texture((32, 40), rng) for _ in range(12)] + [self_texture(images, rng) for _ in range(6)]:
        assert t.dtype == np.float32 and t.shape[2] == 3
        assert 0.0 <= t.min() and t.max() <= 1.0
        assert t.std() > 0.0
    assert procedural_texture((32, 40), rng).shape == (32, 40, 3)
    with pytest.raises(ValueError, match="texture"):
        from lineguard.engines.draem.train import AnomalySynthesiser

        AnomalySynthesiser(images, texture="dtd")


# ---------------------------------------------------------------- losses and networks
def test_ssim_and_focal_loss():
    from lineguard.engines.draem.train import focal_loss, ssim

    x = torch.rand(2, 3, 24, 24)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, torch.rand(2, 3, 24, 24)).item() < 0.5
    logits = torch.randn(2, 2, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    ce = torch.nn.functional.cross_entropy(logits, mask[:, 0].long())
    assert focal_loss(logits, mask, gamma=0.0).item() == pytest.approx(ce.item(), rel=1e-5)
    assert focal_loss(logits, mask).item() < ce.item()  # easy pixels down-weighted


def test_networks_keep_the_input_size_and_the_score_is_the_maps_max():
    from lineguard.engines.draem.torch_model import DraemModel

    torch.manual_seed(0)
    model = DraemModel(4, 4, smooth_kernel=5).eval()
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        reconstruction, logits = model.mask_logits(x)
        scores, maps = model(x)
    assert reconstruction.shape == x.shape and logits.shape == (2, 2, 32, 64)
    assert maps.shape == (2, 1, 32, 64) and scores.shape == (2,)
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    torch.testing.assert_close(scores, maps.flatten(1).amax(dim=1))
    with pytest.raises(ValueError, match="odd"):
        DraemModel(4, 4, smooth_kernel=4)


def test_input_size_must_be_divisible_by_32():
    from lineguard.engines.draem.model import build_model

    with pytest.raises(ValueError, match="divisible by 32"):
        build_model(input_size=48)
    # The smoothing filter follows the input: the paper's 21 px at 256 px.
    assert build_model(input_size=256).trainer.smooth_kernel == 21
    assert build_model().trainer.smooth_kernel == 11  # the default 128 px


# ---------------------------------------------------------------- training, export
def test_tiny_training_writes_a_model_folder_the_scoring_engine_loads(tmp_path: Path):
    from lineguard.engines.runtime import ScoringEngine
    from lineguard.engines.training import train

    data = write_mvtec(tmp_path / "data", n_train=6, n_good=2, n_defect=1, size=32)
    out = tmp_path / "model"
    train("draem", data, out, input_size=(32, 32), steps=3, **TINY)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "draem"
    assert manifest["input"]["height"] == 32 and manifest["input"]["std"] == [1.0, 1.0, 1.0]
    extra = manifest["extra"]
    assert extra["steps"] == 3 and extra["texture"] == "mixed" and extra["recon_width"] == 4
    assert np.isfinite(list(extra["final_losses"].values())).all()
    assert manifest["thresholds"]["value"] > 0
    engine = ScoringEngine(out, providers=["CPUExecutionProvider"], threads=1)
    scores, maps = engine.score(_images(3, 32, seed=5))
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(scores, maps.reshape(3, -1).max(axis=1), rtol=1e-6)

    # `lineguard eval` and `lineguard bench engine` take it as any other model folder.
    from lineguard.benchmarks.engine import ceiling_graph
    from lineguard.cli import main

    assert main(["eval", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "eval.json"),
                 "--threads", "1"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["kind"] == "draem" and 0.0 <= report["image_auroc"] <= 1.0
    # bench engine's ceiling: the graph cut at the discriminator's output convolution (softmax, smoothing
    # and max left out); the benchmark itself is kind-agnostic (run by hand, docs/engines.md).
    import onnxruntime as ort

    ceiling, cut_at = ceiling_graph(out / "model.onnx")
    assert len(cut_at) == 1
    session = ort.InferenceSession(ceiling.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": np.zeros((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 2, 32, 32)


@pytest.mark.parametrize("texture", ["procedural", "self"])
def test_onnx_export_matches_torch(tmp_path: Path, texture: str):
    import onnxruntime as ort

    from lineguard.engines.draem.model import build_model

    model = build_model(input_size=32, steps=2, texture=texture, **TINY).fit(_images(4, 32))
    path = tmp_path / "model.onnx"
    model.export_onnx(path)

    x = torch.from_numpy(model.preprocess(_images(5, 32, seed=3)))  # batch 5: not the traced batch
    ref_scores, ref_maps = model.score_tensor(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["score", "anomaly_map"]
    scores, maps = session.run(None, {"image": x.numpy()})
    assert scores.shape == (5,) and maps.shape == (5, 1, 32, 32)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-5)


def test_train_cli_accepts_draem():
    from lineguard.cli import build_parser

    args = build_parser().parse_args(["train", "--model", "draem", "--data", "d", "--out", "m",
                                      "--option", "steps=10"])
    assert args.model == "draem"
