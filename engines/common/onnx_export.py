"""Exporting a torch engine to ONNX the way the runtime expects it (input ``image``, dynamic batch)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

ONNX_OPSET = 17


def export_graph(module: nn.Module, path: str | Path, outputs: list[str], height: int, width: int) -> None:
    """ONNX export with input ``image`` (N x 3 x height x width) and a dynamic batch axis on every output."""
    dummy = torch.zeros(2, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: exact for these graphs and needs no extra package (onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (dummy,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=outputs,
            dynamic_axes={"image": {0: "N"}, **{name: {0: "N"} for name in outputs}},
        )
    onnx.checker.check_model(onnx.load(str(path)))
