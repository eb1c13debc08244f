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
applies when it loads ``model.int8.onnx``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
)

from .data import load_rgb, normal_images
from .manifest import INT8_FILE, ONNX_FILE, Manifest, sha256_file
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


def pick_calibration_images(data: str | Path, count: int) -> list[Path]:
    """``count`` normal images spread evenly over the sorted list (deterministic)."""
    paths = normal_images(data)
    if len(paths) <= count:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def quantize_model(model_dir: str | Path, data: str | Path | None = None, *, n_images: int = 32,
                   per_channel: bool = True, reduce_range: bool = True,
                   method: str = "minmax") -> dict[str, Any]:
    """Write ``model_dir/model.int8.onnx``; returns (and stores in the manifest) what was done."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    source = model_dir / ONNX_FILE
    data = data or manifest.training.get("data")
    if not data:
        raise ValueError("no calibration images: pass --data (a folder of normal images or an MVTec root)")
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

    # How far INT8 strays from FP32 on the calibration images (the threshold is FP32's).
    tensor = preprocess([load_rgb(p) for p in paths], manifest)
    fp32 = np.concatenate([_session(source).run(["score"], {input_name: tensor[i:i + 8]})[0]
                           for i in range(0, len(tensor), 8)])
    int8 = np.concatenate([_session(model_dir / INT8_FILE).run(["score"], {input_name: tensor[i:i + 8]})[0]
                           for i in range(0, len(tensor), 8)])
    relative = (int8 - fp32) / np.maximum(np.abs(fp32), 1e-12)
    # The threshold was calibrated on FP32 scores; INT8 scores run a few percent high (quantisation noise
    # only adds distance to the memory bank), so the INT8 graph gets the FP32 threshold times the median
    # INT8/FP32 ratio on these normal images. ScoringEngine uses it when it loads this file.
    scale = float(np.median(int8 / np.maximum(fp32, 1e-12)))
    info = {
        "file": INT8_FILE,
        "sha256": sha256_file(model_dir / INT8_FILE),
        "format": "QDQ, uint8 activations, int8 weights" + (" per channel" if per_channel else ""),
        "reduce_range": reduce_range,
        "calibration_method": method,
        "quantised_nodes": len(nodes),
        "calibration_data": str(data),
        "calibration_images": len(paths),
        "score_relative_diff_mean": float(relative.mean()),
        "score_relative_diff_max_abs": float(np.abs(relative).max()),
        "threshold_scale": scale,
        "threshold": manifest.thresholds.value * scale,
        "seconds": round(time.perf_counter() - started, 2),
    }
    manifest.extra = {**manifest.extra, "int8": info}
    manifest.save(model_dir)
    log.info("wrote %s (%d nodes quantised; INT8 scores differ from FP32 by %.2f%% on average)",
             model_dir / INT8_FILE, len(nodes), 100 * info["score_relative_diff_mean"])
    return info


def run_export_cli(args: argparse.Namespace, settings: Any) -> int:
    if not args.int8:
        print("export: nothing to do (model.onnx is written by `lineguard train`); pass --int8")
        return 2
    info = quantize_model(args.model, args.data, n_images=args.calibration_images, method=args.calibration_method,
                          per_channel=not args.per_tensor, reduce_range=not args.full_range)
    print(f"export: wrote {Path(args.model) / info['file']} ({info['quantised_nodes']} nodes INT8, calibrated on "
          f"{info['calibration_images']} images; mean score shift {100 * info['score_relative_diff_mean']:+.2f}%)")
    return 0
