"""``lineguard bench engine``: each engine against its own ceiling, at several batch sizes, in one run.

For every model folder, in a fresh process (so peak RSS is the model's own):

* load time (ONNX Runtime session + warm-up);
* per batch size (default 1, 8, 16, 32): images/s and batch latency p50/p99
  for the full engine (uint8 images -> preprocessing -> graph -> score and
  map), as a processor runs it;
* the ceiling at the same batch sizes: the bare network work as ONNX Runtime
  runs it — for PatchCore the backbone and the nearest-neighbour search (the
  graph cut at its TopK), for EfficientAD the networks alone (cut at the last
  convolution of each branch, before the maps are combined), for SimpleNet
  the backbone, adaptor and discriminator (cut at its last 1x1 convolution),
  for the baseline its whole graph — fed a ready float tensor;
* FLOPs per image of the whole graph (Conv and MatMul/Gemm, counted from the
  graph) and the GFLOP/s achieved at batch 16, against the machine's float32
  matrix-multiply rate measured by numpy in the same run.

The JSON keeps, per model and batch size, ``images_per_s``, ``p50_ms``,
``p99_ms`` and ``ceiling_images_per_s``.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lineguard.engines.manifest import INT8_FILE, ONNX_FILE

from .flops import count_graph_flops, numpy_matmul_gflops
from .report import pyplot, save_figure, write_report


DEFAULT_BATCHES = (1, 8, 16, 32)
ROUNDS = 3


def ceiling_graph(onnx_path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """The model's graph cut where the learned networks (and, for PatchCore, the k-NN search) end."""
    model = onnx.load(str(onnx_path))
    nodes = list(model.graph.node)
    topk = [n for n in nodes if n.op_type == "TopK"]
    if topk:
        outputs = [topk[0].output[0]]
    else:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes:
            for name in n.input:
                consumers.setdefault(name, []).append(n)

        def feeds_a_conv(name: str, seen: set[str]) -> bool:
            for c in consumers.get(name, []):
                if c.op_type == "Conv":
                    return True
                if c.name not in seen:
                    seen.add(c.name)
                    if any(feeds_a_conv(o, seen) for o in c.output):
                        return True
            return False

        outputs = [n.output[0] for n in nodes if n.op_type == "Conv" and not feeds_a_conv(n.output[0], set())]
    if not outputs:  # no network in it (the baseline): the ceiling is the graph itself on a ready tensor
        return model, [o.name for o in model.graph.output]
    input_name = model.graph.input[0].name
    model = onnx.shape_inference.infer_shapes(model)  # the extractor needs the types of the cut tensors
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)}
    for name in outputs:
        if name not in known:  # shapes computed in-graph: declare a float tensor of unknown shape
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    extracted = onnx.utils.Extractor(model).extract_model([input_name], outputs)
    return extracted, outputs


def _timed(fn, min_runs: int, budget_s: float) -> list[float]:
    """Latencies (ms) of ``fn`` over at least ``min_runs`` runs or ``budget_s`` seconds."""
    fn()  # warm-up: allocations, kernel choice
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 10 * min_runs:
            break
    return times


def _bench_one(model_dir: str, batches: tuple[int, ...], threads: int, budget_s: float,
               data: str | None, onnx_file: str = ONNX_FILE) -> dict[str, Any]:
    import onnxruntime as ort

    from lineguard.benchmarks.engine_speed import _images
    from lineguard.engines.runtime import ScoringEngine, preprocess

    t0 = time.perf_counter()
    engine = ScoringEngine(model_dir, threads=threads, onnx_file=onnx_file)
    load_s = time.perf_counter() - t0
    size = (engine.manifest.input.height, engine.manifest.input.width)
    ceiling_model, cut_at = ceiling_graph(Path(model_dir) / onnx_file)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ceiling = ort.InferenceSession(ceiling_model.SerializeToString(), options, providers=engine.providers)
    input_name = ceiling.get_inputs()[0].name
    per_batch: dict[str, Any] = {}
    for batch in batches:
        images = np.stack(_images(data, size, batch))
        tensor = preprocess(images, engine.manifest)
        # Alternating rounds, so a neighbour's burst of load falls on both sides of the ratio alike.
        engine_ms: list[float] = []
        ceiling_ms: list[float] = []
        for _ in range(ROUNDS):
            engine_ms += _timed(lambda: engine.score(images), 2, budget_s / ROUNDS)
            ceiling_ms += _timed(lambda: ceiling.run(None, {input_name: tensor}), 2, budget_s / ROUNDS)
        images_per_s = batch * 1000 / statistics.mean(engine_ms)
        ceiling_per_s = batch * 1000 / statistics.mean(ceiling_ms)
        per_batch[str(batch)] = {
            "images_per_s": round(images_per_s, 2),
            "p50_ms": round(float(np.percentile(engine_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(engine_ms, 99)), 2),
            "ceiling_images_per_s": round(ceiling_per_s, 2),
            "share_of_ceiling": round(images_per_s / ceiling_per_s, 3),
            "runs": len(engine_ms),
        }
    flops = count_graph_flops(Path(model_dir) / ONNX_FILE)  # the FP32 graph's: the work, whatever the precision
    return {
        "model": model_dir, "onnx_file": onnx_file, "kind": engine.manifest.kind, "name": engine.manifest.name,
        "input_size": list(size), "providers": engine.providers,
        "backbone": (engine.manifest.backbone or {}).get("name"),
        "load_s": round(load_s, 3), "ceiling_cut_at": cut_at,
        "gflops_per_image": round(flops["gflops"], 3), "batches": per_batch,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run(model_dirs: list[str], batches: tuple[int, ...] = DEFAULT_BATCHES, threads: int = 0,
        budget_s: float = 3.0, data: str | None = None, int8: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "threads": threads or os.cpu_count(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
        "matmul_gflops_per_s": round(numpy_matmul_gflops(), 1), "models": [],
    }
    spawn = multiprocessing.get_context("spawn")
    # With int8, a model folder's model.int8.onnx (``lineguard export --int8``) runs right after its FP32 graph.
    runs = [(str(m), f) for m in model_dirs
            for f in ([ONNX_FILE] + ([INT8_FILE] if int8 and (Path(m) / INT8_FILE).exists() else []))]
    for model_dir, onnx_file in runs:
        with spawn.Pool(1) as pool:  # a fresh process per graph: its own peak RSS
            one = pool.apply(_bench_one, (model_dir, batches, threads, budget_s, data, onnx_file))
        b16 = one["batches"].get("16") or next(iter(one["batches"].values()))
        one["achieved_gflops_per_s_b16"] = round(one["gflops_per_image"] * b16["images_per_s"], 1)
        one["share_of_matmul_rate_b16"] = round(one["achieved_gflops_per_s_b16"] / result["matmul_gflops_per_s"], 3)
        if onnx_file != ONNX_FILE:  # the FP32 graph of the same folder ran just before
            fp32 = result["models"][-1]["batches"]
            one["speedup_vs_fp32"] = {b: round(r["images_per_s"] / fp32[b]["images_per_s"], 3)
                                      for b, r in one["batches"].items() if b in fp32}
        result["models"].append(one)
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def markdown(result: dict[str, Any]) -> str:
    out = [f"numpy float32 matmul: {result['matmul_gflops_per_s']} GFLOP/s on {result['threads']} threads "
           f"(load average {result['load_average_1m_before']} → {result['load_average_1m_after']})", ""]
    for m in result["models"]:
        out += [f"**{m['kind']}** `{m['name']}` `{m.get('onnx_file', ONNX_FILE)}` "
                f"({m['backbone'] or 'no backbone'}, {m['input_size'][0]} px, "
                f"{m['providers'][0]}): load {m['load_s']} s, peak RSS {m['peak_rss_mb']} MB, "
                f"{m['gflops_per_image']} GFLOP/image, {m['achieved_gflops_per_s_b16']} GFLOP/s at batch 16 "
                f"= {100 * m['share_of_matmul_rate_b16']:.0f}% of matmul",
                "", "| batch | images/s | p50 ms | p99 ms | ceiling images/s | share of ceiling |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for batch, r in m["batches"].items():
            out.append(f"| {batch} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                       f"{r['ceiling_images_per_s']} | {100 * r['share_of_ceiling']:.0f}% |")
        if m.get("speedup_vs_fp32"):
            out += ["", "INT8 / FP32 images/s, same run: " + ", ".join(
                f"batch {b} {x:.2f}x" for b, x in m["speedup_vs_fp32"].items())]
        out.append("")
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    """images/s against batch size for each graph, its ceiling dashed in the same colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, m in enumerate(result["models"]):
        batches = [int(b) for b in m["batches"]]
        label = f"{m['kind']} {m['name']} ({m.get('onnx_file', ONNX_FILE)})"
        ax.plot(batches, [r["images_per_s"] for r in m["batches"].values()], marker="o", color=f"C{i}", label=label)
        ax.plot(batches, [r["ceiling_images_per_s"] for r in m["batches"].values()], linestyle="--",
                color=f"C{i}", alpha=0.6, label=f"{label} ceiling")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(b) for m in result["models"] for b in m["batches"]})
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown, plot)
