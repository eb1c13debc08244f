"""The measuring half of ``lineguard bench anomalib``: lineguard's scoring step (its own process:
``python -m lineguard.benchmarks.anomalib_scoring score-lineguard``), ONNX Runtime timing of anomalib's
exported model, and the accuracy metrics of both sides, computed with lineguard's own metric code."""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def score_lineguard(model_dir: Path, data: Path, out: Path, trials: int, seconds_per_trial: float) -> dict[str, Any]:
    """Score the test set through ScoringEngine (dumping scores and maps), then time it at batch 1 and 16.

    Imports no torch: this is what a processor loads.
    """
    import resource

    from lineguard.engines.data import test_samples
    from lineguard.engines.evaluate import score_test_set
    from lineguard.engines.runtime import ScoringEngine

    from .engine_speed import run as engine_speed

    engine = ScoringEngine(model_dir)
    providers = engine.providers
    scored = score_test_set(engine, test_samples(data), batch=16)
    np.save(out / "scores.npy", scored.scores.astype(np.float32))
    np.save(out / "maps.npy", scored.maps.astype(np.float32))
    # engine_speed opens its own engine: drop this one first, so the peak RSS is one engine's, as in a processor.
    del engine, scored
    gc.collect()
    speed = engine_speed(model_dir, data, batches=(1, 16), trials=trials, seconds_per_trial=seconds_per_trial)
    return {"providers": providers, "ort_threads": speed["threads"],
            "batches": speed["batches"], "memory_bank_size": speed["memory_bank_size"],
            "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def onnx_throughput(path: Path, tensors: dict[int, np.ndarray], trials: int, seconds: float) -> dict[str, Any]:
    """images/s of an ONNX graph with ScoringEngine's session settings (anomalib's exported model)."""
    import onnxruntime as ort

    from .engine_speed import _trials

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    out: dict[str, Any] = {}
    for batch, tensor in tensors.items():
        graph = path.with_name(f"{path.stem}.b{batch}.onnx")
        session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda: session.run(None, {name: tensor})  # noqa: E731
        for _ in range(2):
            run()
        start = time.perf_counter()
        run()
        repeats = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
        out[str(batch)] = _trials(run, batch, trials, repeats)
    return out


def side_metrics(scores: np.ndarray, maps: np.ndarray, data: Path, size: tuple[int, int]) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and PRO of raw scores/maps in ``test_samples(data)`` order."""
    from lineguard.engines.data import load_mask, test_samples
    from lineguard.engines.evaluation_metrics import auroc, pro_auc

    samples = test_samples(data)
    if len(scores) != len(samples) or maps.shape != (len(samples), *size):
        raise ValueError(f"expected {len(samples)} scores and maps of {size}, got {scores.shape} and {maps.shape}")
    labels = np.array([s.is_defective for s in samples])
    masks = np.stack([load_mask(s.mask_path, size) for s in samples])
    has_mask = np.array([(not s.is_defective) or s.mask_path is not None for s in samples])
    return {
        "image_auroc": auroc(scores, labels),
        "pixel_auroc": auroc(maps[has_mask], masks[has_mask]),
        "pro": pro_auc(maps[has_mask], masks[has_mask]),
        "n_test_images": len(samples),
        "n_defective": int(labels.sum()),
        "n_pixel_images": int(has_mask.sum()),
    }


def normalised_batches(data: Path, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The throughput batches as lineguard feeds them (ImageNet-normalised float32), for anomalib's ONNX graph."""
    from lineguard.engines.common.backbones import IMAGENET_MEAN, IMAGENET_STD
    from lineguard.engines.manifest import InputSpec, Manifest, Thresholds
    from lineguard.engines.runtime import preprocess

    from .engine_speed import _images

    spec = Manifest(kind="patchcore", name="", version="", thresholds=Thresholds(0.0, ""),
                    input=InputSpec(size[0], size[1], list(IMAGENET_MEAN), list(IMAGENET_STD)))
    return {b: preprocess(_images(data, size, b), spec) for b in (1, 16)}


def main(argv: list[str] | None = None) -> int:
    """The lineguard scoring step, run by :func:`.anomalib_compare.run` in a process of its own."""
    parser = argparse.ArgumentParser(description="lineguard's side of `lineguard bench anomalib` (internal)")
    parser.add_argument("step", choices=["score-lineguard"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--seconds-per-trial", type=float, default=1.5)
    args = parser.parse_args(argv)
    out = Path(args.out)
    result = score_lineguard(Path(args.model), Path(args.data), out, args.trials, args.seconds_per_trial)
    (out / "score.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
