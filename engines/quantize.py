"""INT8 static quantisation of an exported model: ``model.onnx`` -> ``model.int8.onnx`` beside it.

``lineguard export --model DIR --int8 [--data NORMAL_IMAGES]`` runs
onnxruntime's ``quantize_static``, calibrated on normal images preprocessed
exactly as :class:`ScoringEngine` does (so the activation ranges are the
production ones). Only the backbone is quantised (its Conv, Clip and Add
nodes, QDQ format, per-channel 7-bit weights: with full 8-bit weights, AVX2
CPUs without VNNI saturate uint8 x int8 products, and on hazelnut_toy the
pixel AUROC fell from 0.989 to 0.43; ``reduce_range`` avoids that). The
memory-bank distance (||a||^2 - 2ab + ||b||^2 is a difference of large
numbers, ruined by 8-bit rounding), the score re-weighting and the Gaussian
blur stay float32. Score with
``ScoringEngine(DIR, onnx_file="model.int8.onnx")`` or
``lineguard eval --onnx-file model.int8.onnx``.

The manifest keeps describing ``model.onnx``; its ``extra.int8`` records the
INT8 file's sha256, the calibration images, how far INT8 scores stray from
FP32 on them and the threshold rescaled accordingly (the manifest's
threshold was calibrated on FP32 scores), which :class:`ScoringEngine`
applies when it loads ``model.int8.onnx``. That calibration is
:mod:`.derived`'s, shared with the FP16 export (:mod:`.fp16`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
)

from .data import load_rgb
from .derived import calibrate_derived, calibration_source, pick_calibration_images, record
from .manifest import INT8_FILE, ONNX_FILE, Manifest
from .runtime import preprocess

log = logging.getLogger(__name__)

# Convolutions under these exporter scopes are quantised (the backbone); everything else stays float.
QUANTISED_SCOPES = ("/feature_extractor/",)
QUANTISED_OPS = {"Conv", "Clip", "Relu", "Add"}


class NormalImageReader(CalibrationDataReader):
    """Feeds preprocessed normal images, one batch per call, to the calibrator."""

    def __init__(self, paths: list[Path], manifest: Manifest, input_name: str = "image", batch: int = 4) -> None:
        self.paths = paths
        self.manifest = manifest
        self.input_name = input_name
        self.batch = batch
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.paths):
            return None
        chunk = self.paths[self.position:self.position + self.batch]
        self.position += len(chunk)
        return {self.input_name: preprocess([load_rgb(p) for p in chunk], self.manifest)}

    def rewind(self) -> None:
        self.position = 0


def quantize_model(model_dir: str | Path, data: str | Path | None = None, *, n_images: int = 32,
                   per_channel: bool = True, reduce_range: bool = True,
                   method: str = "minmax") -> dict[str, Any]:
    """Write ``model_dir/model.int8.onnx``; returns (and stores in the manifest) what was done."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    source = model_dir / ONNX_FILE
    data = calibration_source(manifest, data)
    paths = pick_calibration_images(data, n_images)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}")

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + graph cleanup first, as onnxruntime recommends before quantising.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        # The backbone's Conv, its activations (Clip = ReLU6) and residual Adds: quantising the activations
        # too keeps the tensors int8 from one conv to the next instead of a dequantise/quantise per layer.
        nodes = [n.name for n in graph.node if n.op_type in QUANTISED_OPS and n.name.startswith(QUANTISED_SCOPES)]
        if not nodes:  # a graph from another exporter: quantise every Conv
            nodes = [n.name for n in graph.node if n.op_type == "Conv"]
        input_name = graph.input[0].name
        reader = NormalImageReader(paths, manifest, input_name)
        out = model_dir / (INT8_FILE + ".tmp")
        quantize_static(
            str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, calibrate_method=methods[method],
            calibration_providers=["CPUExecutionProvider"],
        )
    out.replace(model_dir / INT8_FILE)

    info = {
        **calibrate_derived(model_dir, manifest, INT8_FILE, paths, input_name),
        "format": "QDQ, uint8 activations, int8 weights" + (" per channel" if per_channel else ""),
        "reduce_range": reduce_range,
        "calibration_method": method,
        "quantised_nodes": len(nodes),
        "calibration_data": str(data),
        "seconds": round(time.perf_counter() - started, 2),
    }
    record(model_dir, "int8", info)
    log.info("wrote %s (%d nodes quantised; INT8 scores differ from FP32 by %.2f%% on average)",
             model_dir / INT8_FILE, len(nodes), 100 * info["score_relative_diff_mean"])
    return info
