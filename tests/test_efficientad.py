"""EfficientAD-S on small generated images: training -> model folder, ONNX parity, checkpoint resume.

Everything runs at 64 px for a few steps: these check the plumbing and the
maths of the pieces, not detection quality (the README has the measured
AUROC on real data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from engine_images import needs_weights, normal_image, write_mvtec  # noqa: E402

needs_lite0 = needs_weights("efficientnet_lite0")

SIZE = 64


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [normal_image(rng, SIZE) for _ in range(n)]


def _state(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    m = model.model
    return {**{f"s.{k}": v for k, v in m.student.state_dict().items()},
            **{f"a.{k}": v for k, v in m.autoencoder.state_dict().items()}}


# ---------------------------------------------------------------- pure pieces (no backbone needed)
def test_hard_feature_loss_averages_the_top_tenth_of_a_percent():
    from lineguard.engines.efficientad.train import hard_feature_loss

    teacher = torch.zeros(1, 10, 10, 20)  # 2000 elements: the 0.999 quantile keeps the top 2
    student = torch.zeros_like(teacher)
    student.view(-1)[:5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    # Top 2 squared distances are 25 and 16.
    assert hard_feature_loss(teacher, student).item() == pytest.approx((25 + 16) / 2)


def test_quantile_normalisation_sends_qa_to_0_and_qb_to_0_1():
    from lineguard.engines.efficientad.anomaly_map import combine_maps, map_quantiles, normalise_map

    maps = torch.arange(1000, dtype=torch.float32).view(10, 1, 10, 10)
    q = map_quantiles(maps)
    assert q[0].item() == pytest.approx(0.9 * 999, rel=1e-5)
    assert q[1].item() == pytest.approx(0.995 * 999, rel=1e-5)
    assert normalise_map(q[0], q).item() == pytest.approx(0.0, abs=1e-6)
    assert normalise_map(q[1], q).item() == pytest.approx(0.1, rel=1e-5)
    # Equal-weight combination of two maps normalised each on its own scale.
    combined = combine_maps(q[1].view(1, 1, 1, 1), 2 * q[0].view(1, 1, 1, 1), q, 2 * q)
    assert combined.item() == pytest.approx(0.05, rel=1e-5)


def test_pdn_is_shift_equivariant_by_its_stride_so_crops_are_windows():
    from lineguard.engines.efficientad.torch_model import PDNSmall, pdn_output_size

    torch.manual_seed(0)
    pdn = PDNSmall(8).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        full = pdn(x)
        crop = pdn(x[:, :, 8:8 + 64, 12:12 + 64])  # offset (4a, 4b) = (8, 12)
    n = pdn_output_size(64)
    assert full.shape[-1] == pdn_output_size(128) == 128 // 4 - 8
    torch.testing.assert_close(crop, full[:, :, 2:2 + n, 3:3 + n], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- training, export, resume
@needs_lite0
def test_tiny_training_writes_a_model_folder_the_scoring_engine_loads(tmp_path: Path):
    from lineguard.engines.runtime import ScoringEngine
    from lineguard.engines.training import train

    data = write_mvtec(tmp_path / "data", n_train=12, n_good=2, n_defect=1, size=SIZE)
    out = tmp_path / "model"
    train("efficientad", data, out, input_size=(SIZE, SIZE), steps=3, progress=False)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "efficientad"
    assert manifest["input"]["height"] == SIZE
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["extra"]["steps"] == 3
    qa, qb = manifest["extra"]["quantiles_st"]
    assert qb > qa
    engine = ScoringEngine(out, providers=["CPUExecutionProvider"], threads=1)
    images = _images(3, seed=5)
    scores, maps = engine.score(images)
    assert scores.shape == (3,) and maps.shape == (3, 1, SIZE, SIZE)
    assert np.isfinite(maps).all()
    # The score is the max of the (upsampled) map, as exported.
    np.testing.assert_allclose(scores, maps.reshape(3, -1).max(axis=1), rtol=1e-6)


@needs_lite0
@pytest.mark.parametrize("teacher", ["backbone", "distilled"])
def test_onnx_export_matches_torch(tmp_path: Path, teacher: str):
    import onnxruntime as ort

    from lineguard.engines.efficientad.model import build_model

    # channels=32: a narrow distilled teacher keeps the test fast; the code path is the same.
    model = build_model(input_size=SIZE, teacher=teacher, steps=2, distill_steps=2, channels=32, progress=False)
    model.fit(_images(8))
    # Calibrated quantiles are baked in: a fresh model would have (0, 1).
    assert model.model.quantiles_st.tolist() != [0.0, 1.0]
    path = tmp_path / "model.onnx"
    model.export_onnx(path)

    images = _images(5, seed=3)  # batch 5: not the batch the graph was traced with
    x = model._to_input(images)
    ref_scores, ref_maps = model.score_tensor(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["score", "anomaly_map"]
    scores, maps = session.run(None, {"image": x.numpy()})
    assert maps.shape == (5, 1, SIZE, SIZE)
    for got, ref in ((scores, ref_scores), (maps, ref_maps)):
        scale = float(np.abs(ref).max())
        assert scale > 0
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)

    # The FLOPs counted from the graph are those of the torch convolutions (hook count).
    from lineguard.benchmarks.flops import count_graph_flops
    from lineguard.engines.efficientad.torch_model import count_conv_flops

    assert count_graph_flops(path)["gflops"] == pytest.approx(count_conv_flops(model.model, SIZE) / 1e9, rel=1e-6)


@needs_lite0
def test_checkpoint_resume_continues_from_the_saved_step(tmp_path: Path):
    from lineguard.engines.efficientad.model import build_model
    from lineguard.engines.efficientad.train import CHECKPOINT_FILE

    images = _images(5)
    options = dict(input_size=SIZE, progress=False, checkpoint_every=2)
    ckpt = tmp_path / "ckpt"

    # A 4-step run killed right after its step-2 checkpoint.
    interrupted = build_model(steps=4, checkpoint_dir=str(ckpt), **options)
    save = interrupted.trainer._save_checkpoint

    def save_then_die(state):  # noqa: ANN001
        save(state)
        raise KeyboardInterrupt

    interrupted.trainer._save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(images)
    saved = torch.load(ckpt / CHECKPOINT_FILE, weights_only=False)
    assert saved["step"] == 2
    before = {**{f"s.{k}": v for k, v in saved["student"].items()},
              **{f"a.{k}": v for k, v in saved["autoencoder"].items()}}

    resumed = build_model(steps=4, checkpoint_dir=str(ckpt), **options).fit(images)
    assert resumed.trainer.start_step == 2
    assert torch.load(ckpt / CHECKPOINT_FILE, weights_only=False)["step"] == 4

    straight = build_model(steps=4, **options).fit(images)
    assert straight.trainer.start_step == 0
    a, b = _state(resumed), _state(straight)
    # Resumed = uninterrupted run (same images, augmentations and dropout per step)...
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # ...and steps 3-4 really ran: the weights moved past the step-2 checkpoint.
    assert any(not torch.allclose(a[k], before[k]) for k in a)

    # A checkpoint from other options is refused, not silently mixed in.
    with pytest.raises(ValueError, match="other options"):
        build_model(steps=4, checkpoint_dir=str(ckpt), lr=1e-3, **options).fit(images)


@needs_lite0
def test_crop_training_runs_and_reports_its_flops():
    from lineguard.engines.efficientad.model import build_model

    model = build_model(input_size=96, crop_size=64, steps=2, progress=False).fit(_images(4))
    assert model.trainer.crop_size == 64
    extra = model.manifest_extra
    assert extra["crop_size"] == 64 and extra["gflops_per_image"] > 0
    assert np.isfinite(list(extra["final_losses"].values())).all()
