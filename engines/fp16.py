"""FP16 export of a trained model: ``model.onnx`` -> ``model.fp16.onnx`` beside it.

``lineguard export --model DIR --fp16 [--data IMAGES]`` converts the graph with onnxconverter-common's
``convert_float_to_float16`` (``keep_io_types``: the input stays the float32 batch :func:`preprocess`
makes and the outputs stay float32, with Casts inside). Its threshold is calibrated the way INT8's is
(:mod:`.derived`: FP32 threshold x the median FP16/FP32 score ratio on normal images) and recorded with
the parity figures in the manifest's ``extra.fp16``; ``processor.precision: fp16`` scores with it, and
under TensorRT turns on FP16 kernels.

Which nodes stay float32 (``keep_fp32``):

- ``head`` (default): everything outside the backbone, as for INT8: PatchCore's memory-bank distance
  ``||a||^2 - 2ab + ||b||^2`` is a difference of large numbers, where FP16's 11-bit significand costs
  most; the backbone, where nearly all the FLOPs are, runs FP16.
- ``none``: the whole graph (onnxconverter-common's default op block list only, which keeps TopK and
  Resize float32 anyway).

Measured on the CPU provider (docs/engines.md): on magnetic_tile the whole graph differs from FP32 by up
to 1.74% on the calibration images and flips 3 of 678 test verdicts, ``head`` by 0.89% and 2; on
hazelnut_toy both flip none. The margin is small, so ``head`` is the default as the cheaper risk.

A graph without a backbone scope (the baseline engine, another exporter) converts whole either way.
The CPU provider runs FP16 graphs by casting around the kernels it lacks: the FP16 graph is for GPUs
(CUDA, TensorRT), and the CPU runs it for parity checks.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import onnx

from .derived import calibrate_derived, calibration_source, pick_calibration_images, record
from .manifest import FP16_FILE, ONNX_FILE, Manifest

log = logging.getLogger(__name__)

BACKBONE_SCOPES = ("/feature_extractor/",)  # the exporter's scope for the backbone (as engines/quantize.py)
KEEP_FP32 = ("head", "none")
# FP16's largest finite value. onnxconverter-common clamps constants above max_finite_val (default 1e4) to
# it; only values FP16 cannot hold at all should be clamped.
FP16_MAX = 65504.0


def fp32_nodes(graph: onnx.GraphProto, keep_fp32: str) -> list[str]:
    """Names of the nodes to leave in float32."""
    if keep_fp32 not in KEEP_FP32:
        raise ValueError(f"keep_fp32 must be one of {KEEP_FP32}")
    in_backbone = [n.name.startswith(BACKBONE_SCOPES) for n in graph.node]
    if keep_fp32 == "none" or not any(in_backbone):
        return []
    return [n.name for n, inside in zip(graph.node, in_backbone) if not inside]


def detach_outputs(graph: onnx.GraphProto) -> int:
    """Give every graph output that other nodes also read an Identity of its own; returns how many.

    With ``keep_io_types`` onnxconverter-common casts a graph output back to float32 under its own name,
    and nodes that read it inside the graph (the baseline's score is a ReduceMax of its anomaly map) get a
    float32 input typed float16: ONNX Runtime refuses the graph. Behind an Identity they read the float16
    tensor and only the Identity's output is cast.
    """
    outputs = {o.name for o in graph.output}
    read = {name for node in graph.node for name in node.input} & outputs
    for name in sorted(read):
        inner = f"{name}_value"
        for node in graph.node:
            node.output[:] = [inner if x == name else x for x in node.output]
            node.input[:] = [inner if x == name else x for x in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_output"))
    return len(read)


def convert_graph(source: Path, out: Path, keep_fp32: str = "head") -> dict[str, Any]:
    """Write the FP16 version of ``source`` to ``out``; returns how many nodes stayed float32."""
    from onnxconverter_common import float16  # the export extra; the runtime never needs it

    model = onnx.load(str(source))
    detach_outputs(model.graph)
    blocked = fp32_nodes(model.graph, keep_fp32)
    with warnings.catch_warnings(record=True) as caught:  # one warning per weight it rounds: count them
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                     node_block_list=blocked or None)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(out))
    # Tensors holding values FP16 cannot: tiny weights are raised to 1e-7 (harmless), values past 65504 are
    # cut to it (a parity risk: the parity figures then tell).
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    overflowing = sum(m.endswith(str(FP16_MAX)) for m in messages)
    return {"keep_fp32": keep_fp32, "fp32_nodes": len(blocked), "nodes": len(model.graph.node),
            "tensors_clamped": {"below_1e-7": len(messages) - overflowing, "above_65504": overflowing}}


def export_fp16(model_dir: str | Path, data: str | Path | None = None, *, n_images: int = 32,
                keep_fp32: str = "head") -> dict[str, Any]:
    """Write ``model_dir/model.fp16.onnx``; returns (and stores in the manifest's ``extra.fp16``) what was done."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    data = calibration_source(manifest, data)
    paths = pick_calibration_images(data, n_images)
    out = model_dir / (FP16_FILE + ".tmp")  # *.tmp: never taken for a model file while being written
    conversion = convert_graph(model_dir / ONNX_FILE, out, keep_fp32)
    out.replace(model_dir / FP16_FILE)
    graph = onnx.load(str(model_dir / FP16_FILE), load_external_data=False).graph
    info = {
        **calibrate_derived(model_dir, manifest, FP16_FILE, paths, graph.input[0].name),
        **conversion,
        "format": "float16 weights and activations, float32 input and outputs",
        "calibration_data": str(data),
        "seconds": round(time.perf_counter() - started, 2),
    }
    record(model_dir, "fp16", info)
    log.info("wrote %s (%d of %d nodes kept float32; FP16 scores differ from FP32 by %.3f%% at most)",
             model_dir / FP16_FILE, conversion["fp32_nodes"], conversion["nodes"],
             100 * info["score_relative_diff_max_abs"])
    return info
