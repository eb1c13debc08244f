"""Engine throughput: images/s of a model folder through :class:`ScoringEngine` (the production path).

    python -m lineguard.benchmarks.engine_speed --model /tmp/models/hazelnut \\
        --data /work/shared/data/hazelnut_toy --batch 16 --out out.json [--onnx-file model.int8.onnx] \\
        [--providers OpenVINOExecutionProvider,CPUExecutionProvider]

Two figures per batch size: ``graph`` (the ONNX graph alone on a ready float
tensor) and ``engine`` (uint8 images at the model's input size -> preprocess
-> graph: what a processor pays per batch). Each is the best and the median
of several timed trials after warm-up; the best is the capability of the
machine, the median what it gave while shared. The 1-minute load average is
recorded beside them because on a shared 2-core machine other processes
easily halve the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lineguard.cli_options import add_output_file
from lineguard.engines.data import list_images, load_rgb
from lineguard.engines.manifest import ONNX_FILE
from lineguard.engines.runtime import ScoringEngine, preprocess


def _images(data: str | Path | None, size: tuple[int, int], count: int) -> list[np.ndarray]:
    """``count`` uint8 images at the model's input size: the data's test images, or random noise."""
    if data:
        root = Path(data)
        folder = root / "test" if (root / "test").is_dir() else root
        paths = list_images(folder)
        if paths:
            return [load_rgb(paths[i % len(paths)], size) for i in range(count)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def _trials(fn, n_images: int, trials: int, repeats: int) -> dict[str, float]:
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rates.append(n_images * repeats / (time.perf_counter() - start))
    return {"best": round(max(rates), 2), "median": round(statistics.median(rates), 2)}


def run(model_dir: str | Path, data: str | Path | None = None, *, batches: tuple[int, ...] = (1, 16),
        onnx_file: str = ONNX_FILE, threads: int = 0, spin: bool = False, trials: int = 7,
        seconds_per_trial: float = 1.5, providers: list[str] | None = None,
        engine_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``engine_options``: more :class:`ScoringEngine` arguments (``max_batch``, ``device_id``,
    ``trt_cache_dir``: the GPU check's), e.g. a TensorRT profile that spans the largest batch timed."""
    start = time.perf_counter()
    engine = ScoringEngine(model_dir, onnx_file=onnx_file, threads=threads, spin=spin, providers=providers,
                           **(engine_options or {}))
    load_s = time.perf_counter() - start  # session + first batch: OpenVINO compiles its graph in here
    size = (engine.manifest.input.height, engine.manifest.input.width)
    result: dict[str, Any] = {
        "model": str(model_dir), "kind": engine.manifest.kind, "onnx_file": onnx_file,
        "providers": engine.providers, "onnxruntime": ort.__version__, "load_s": round(load_s, 3),
        "threads": threads or os.cpu_count(), "spin": spin, "input_size": list(size),
        "memory_bank_size": engine.manifest.extra.get("memory_bank_size"),
        "load_average_1m_before": round(os.getloadavg()[0], 2), "batches": {},
    }
    for batch in batches:
        images = np.stack(_images(data, size, batch))
        tensor = preprocess(images, engine.manifest)
        for _ in range(2):  # warm-up: first runs allocate and pick kernels
            engine.score_tensor(tensor)
        start = time.perf_counter()
        engine.score_tensor(tensor)
        repeats = max(1, int(seconds_per_trial / max(time.perf_counter() - start, 1e-6)))
        cpu0 = time.process_time()
        graph = _trials(lambda: engine.score_tensor(tensor), batch, trials, repeats)
        cpu = time.process_time() - cpu0
        result["batches"][str(batch)] = {
            "graph_images_per_s": graph,
            "engine_images_per_s": _trials(lambda: engine.score(images), batch, trials, repeats),
            # CPU seconds per image in the graph: less sensitive to other processes than wall time.
            "graph_cpu_ms_per_image": round(1000 * cpu / (batch * repeats * trials), 2),
        }
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"### {result['kind']} `{result['model']}` ({result['onnx_file']}, {', '.join(result['providers'])}, "
             f"{result['threads']} threads{', spinning' if result['spin'] else ''})", "",
             "| batch | graph img/s best | graph median | engine img/s best | engine median | graph CPU ms/img |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch, r in result["batches"].items():
        lines.append(f"| {batch} | {r['graph_images_per_s']['best']} | {r['graph_images_per_s']['median']} "
                     f"| {r['engine_images_per_s']['best']} | {r['engine_images_per_s']['median']} "
                     f"| {r['graph_cpu_ms_per_image']} |")
    lines.append(f"\nload average (1 min) {result['load_average_1m_before']} before, "
                 f"{result['load_average_1m_after']} after.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--data", help="images to score (MVTec root or folder); default random noise")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1 and 16)")
    parser.add_argument("--onnx-file", default=ONNX_FILE)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--spin", action="store_true", help="let idle ORT workers spin (a dedicated scoring box)")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--seconds-per-trial", type=float, default=1.5)
    parser.add_argument("--providers", help="ONNX Runtime providers, comma-separated, in order "
                        "(default: the engine's preference among those installed)")
    add_output_file(parser, "write the result JSON here")
    args = parser.parse_args(argv)
    result = run(args.model, args.data, batches=tuple(args.batch or (1, 16)), onnx_file=args.onnx_file,
                 threads=args.threads, spin=args.spin, trials=args.trials, seconds_per_trial=args.seconds_per_trial,
                 providers=args.providers.split(",") if args.providers else None)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
