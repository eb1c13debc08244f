"""Backbone registry: offline weights, clear errors when they are missing, feature shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from lineguard.engines.common.backbones import (  # noqa: E402
    BACKBONES, FeatureExtractor, WeightsNotFoundError, backbone_info, find_weights, load_backbone,
)

from engine_images import weights_installed  # noqa: E402


@pytest.fixture(autouse=True)
def _no_user_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The developer's own weight folders must not leak into these tests.
    monkeypatch.delenv("LINEGUARD_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in BACKBONES:
        monkeypatch.delenv("LINEGUARD_WEIGHTS_" + name.upper(), raising=False)


def test_user_supplied_backbone_without_weights_explains_how_to_install() -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        load_backbone("wide_resnet50_2")
    message = str(err.value)
    assert "wide_resnet50_2-95faca4d.pth" in message
    assert "weights_path=FILE" in message and "LINEGUARD_WEIGHTS_WIDE_RESNET50_2" in message
    assert "never downloads" in message


def test_explicit_missing_weight_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_backbone("mobilenet_v2", weights_path=tmp_path / "nope.pth")


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2"):
        load_backbone("vgg19")


def test_weights_from_env_and_dir_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet18

    # A randomly initialised resnet18 saved under torchvision's file name stands in for the real weights.
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(resnet18(weights=None).state_dict(), folder / "resnet18-f37072fd.pth")
    monkeypatch.setenv("LINEGUARD_WEIGHTS_DIR", str(folder))
    assert find_weights("resnet18") == folder / "resnet18-f37072fd.pth"
    model = load_backbone("resnet18")
    feats = FeatureExtractor(model, BACKBONES["resnet18"].default_layers)(torch.zeros(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"layer2": (1, 128, 8, 8), "layer3": (1, 256, 4, 4)}
    info = backbone_info("resnet18", ["layer2"])
    assert info["name"] == "resnet18" and len(info["weights_sha256"]) == 64
    # The per-backbone variable wins over the folder.
    other = tmp_path / "mine.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    monkeypatch.setenv("LINEGUARD_WEIGHTS_RESNET18", str(other))
    assert find_weights("resnet18") == other


def test_corrupted_packaged_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lineguard.engines.common import backbones

    # A packaged file (found without weights_path or env) whose content differs from the recorded sha256.
    bad = tmp_path / BACKBONES["mobilenet_v2"].weights_file
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(backbones, "find_weights", lambda name, weights_path=None: bad)
    with pytest.raises(ValueError, match="sha256"):
        load_backbone("mobilenet_v2")


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_backbones_load_offline_with_registry_shapes(name: str) -> None:
    if not weights_installed(name):
        pytest.skip(f"{name} weights not installed ({BACKBONES[name].install})")
    spec = BACKBONES[name]
    extractor = FeatureExtractor(load_backbone(name), spec.default_layers)
    feats = extractor(torch.zeros(1, 3, 64, 64))
    for layer in spec.default_layers:
        assert feats[layer].shape[1] == spec.channels[layer]
        assert feats[layer].shape[-1] == 64 // spec.strides[layer]
    assert extractor.out_channels() == spec.channels
    # Pretrained, not random: ImageNet BatchNorm statistics are not the init values (mean 0, var 1).
    model = load_backbone(name)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert float(bn.running_mean.abs().sum()) > 0.0
