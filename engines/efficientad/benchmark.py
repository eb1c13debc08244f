"""FLOPs per image and achieved ONNX Runtime GFLOP/s of an exported model, against numpy's matmul rate.

    python -m lineguard.engines.efficientad.benchmark MODEL_DIR [--batch 16] [--threads 2] [--repeats 3]

FLOPs are counted from the graph itself (no torch needed): for every Conv,
2 x (C_in / groups) x kH x kW x output elements, and for every MatMul/Gemm
2 x K x output elements, with the shapes from ONNX shape inference at batch 1.
Element-wise ops, pooling and resizes are left out (well under 1% here). The
reference is numpy float32 ``A @ B`` on 2048 x 2048 matrices (2 x 2048^3 FLOPs),
which is the best dense rate BLAS reaches on this CPU with the same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def count_graph_flops(onnx_path: str | Path) -> dict[str, float]:
    """FLOPs per image of Conv and MatMul/Gemm nodes, from shapes inferred at batch 1."""
    model = onnx.load(str(onnx_path))
    for tensor in list(model.graph.input) + list(model.graph.output):
        dim0 = tensor.type.tensor_type.shape.dim[0]
        dim0.Clear()
        dim0.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)  # data_prop: Resize sizes computed in-graph
    shapes = {vi.name: _dims(vi) for vi in list(model.graph.value_info) + list(model.graph.output)
              + list(model.graph.input)}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    unknown = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
               and (not shapes.get(n.output[0]) or any(d <= 0 for d in shapes[n.output[0]]))]
    if unknown:  # shapes computed in-graph (e.g. "same" padding): run it once at batch 1 to see them
        shapes.update(_run_shapes(model, unknown))
    conv = matmul = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type == "Conv":
            w = weights.get(node.input[1]) or shapes.get(node.input[1])
            conv += 2 * int(np.prod(w[1:])) * int(np.prod(out))  # w: C_out x C_in/groups x kH x kW
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0]) or weights.get(node.input[0])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            matmul += 2 * int(k) * int(np.prod(out))
    return {"conv_gflops": conv / 1e9, "matmul_gflops": matmul / 1e9, "gflops": (conv + matmul) / 1e9}


def _run_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Actual shapes of tensors ``names``, from one ONNX Runtime run on a zero image."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
            for i in session.get_inputs()}
    values = session.run(names, feed)
    return {name: list(v.shape) for name, v in zip(names, values)}


def numpy_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 matmul rate in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def ort_images_per_s(model_dir: str | Path, batch: int = 16, threads: int = 0, repeats: int = 3) -> dict[str, Any]:
    """Best-of-``repeats`` ONNX Runtime rate at ``batch`` on a preprocessed float batch (the graph alone)."""
    from ..runtime import ScoringEngine

    engine = ScoringEngine(model_dir, providers=["CPUExecutionProvider"], threads=threads, warmup=False)
    h, w = engine.manifest.input.height, engine.manifest.input.width
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
    engine.score_tensor(x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.score_tensor(x)
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "best_s": min(times), "median_s": float(np.median(times)),
            "images_per_s": batch / min(times), "threads": threads or os.cpu_count()}


def benchmark(model_dir: str | Path, batch: int = 16, threads: int = 0, repeats: int = 3) -> dict[str, Any]:
    flops = count_graph_flops(Path(model_dir) / "model.onnx")
    if threads:  # numpy's BLAS reads these at import; set before running this module for a fair match
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # Matmul before and after ORT, best of both: on a shared machine the load changes between the two.
    before = numpy_matmul_gflops()
    ort = ort_images_per_s(model_dir, batch, threads, repeats)
    matmul = max(before, numpy_matmul_gflops())
    achieved = flops["gflops"] * ort["images_per_s"]
    return {**flops, **ort, "ort_gflops_per_s": achieved, "numpy_matmul_gflops_per_s": matmul,
            "numpy_matmul_before_after": [before, matmul], "ratio_to_matmul": achieved / matmul}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(benchmark(args.model_dir, args.batch, args.threads, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
