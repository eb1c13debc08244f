"""``lineguard bench anomalib``: lineguard's PatchCore against anomalib 2.7's, same backbone and data, in one run.

Both sides run as subprocesses, each step in its own process, so their peak RSS compares (each
child's own, see ``run_measured``):

* **anomalib**: a separate virtualenv (``.cache/anomalib-venv``, set up here once and cached) with
  ``torch``, ``torchvision`` and ``anomalib`` pinned; ``anomalib_driver.py`` fits anomalib's ``Patchcore`` (the
  offline MobileNetV2 as an ``nn.Module``) and scores with PyTorch in inference mode.
* **lineguard**: ``lineguard train --model patchcore`` in this venv, then scoring through
  :class:`ScoringEngine` (ONNX Runtime), the production path.

Same backbone weights (the packaged MobileNetV2 file, sha256 recorded), layers, input size and coreset
ratio (anomalib's default 10%, passed to lineguard whose own default is 1%); same test images. Each side
dumps its raw image scores and anomaly maps as .npy; the metrics are computed here, for both, with
lineguard's :mod:`engines.evaluation_metrics`, so the AUROCs differ only by the models.

Throughput is images/s on a ready, normalised batch (the model alone: ONNX Runtime session vs the torch
module), best and median of several timed trials after warm-up; the figures with pre-processing
(uint8 -> lineguard's ``ScoringEngine.score``; [0, 1] tensor -> anomalib's ``module(x)``) come beside them.
The 1-minute load average is recorded: on a shared 2-core machine it moves every figure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .anomalib_report import delta, ratio
from .anomalib_scoring import normalised_batches, onnx_throughput, side_metrics
from .anomalib_venv import OFFLINE_ENV, default_venv, ensure_venv
from .measure import run_measured

DRIVER = Path(__file__).with_name("anomalib_driver.py")
BACKBONE = "mobilenet_v2"
# anomalib's KCenterGreedy allocates a fresh N x 253 float tensor (29 MB here) per pick. With glibc's default
# dynamic mmap threshold these come from the heap, which fragments: the fit process grew by ~17 MB per pick
# (20 GB and an OOM kill at pick 1060 of 2866). A fixed 1 MiB threshold keeps every such buffer an mmap
# returned on free; RSS then stays flat. Applied to anomalib's fit step only, the one that needs it.
ANOMALIB_FIT_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


@dataclass
class CompareConfig:
    data: Path
    input_size: int = 256
    layers: tuple[str, ...] = ("features.6", "features.13")
    coreset_ratio: float = 0.1  # anomalib's default coreset_sampling_ratio
    num_neighbors: int = 9  # both sides' default
    anomalib_train_batch: int = 32  # anomalib's default train_batch_size
    match_fit_images: bool = False  # give anomalib lineguard's fit split instead of all of train/good
    seed: int = 0  # anomalib's coreset seed (its first pick is random); lineguard's train uses seed 0
    trials: int = 7
    seconds_per_trial: float = 1.5
    onnx: bool = True  # also export anomalib's fitted model to ONNX and time it in ONNX Runtime
    max_rss_mb: float = 8000.0  # any step past this is killed (shared machine)
    venv: Path | None = None
    work_dir: Path | None = None


def _mb(rss: float) -> float:
    return round(rss, 1)


def run(cfg: CompareConfig) -> dict[str, Any]:
    from lineguard.engines.common.backbones import find_weights, get_spec
    from lineguard.engines.data import normal_images, test_samples
    from lineguard.engines.manifest import Manifest, sha256_file
    from lineguard.engines.training import split_calibration

    data = Path(cfg.data).resolve()
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="lineguard-vs-anomalib-"))
    (work / "lineguard").mkdir(parents=True, exist_ok=True)
    (work / "anomalib").mkdir(parents=True, exist_ok=True)
    size = (cfg.input_size, cfg.input_size)
    weights = find_weights(BACKBONE)
    sha = sha256_file(weights)
    if sha != get_spec(BACKBONE).weights_sha256:
        raise ValueError(f"{weights}: unexpected sha256 {sha}")
    load_before = round(os.getloadavg()[0], 2)

    venv = Path(cfg.venv or default_venv())
    t0 = time.perf_counter()
    python = ensure_venv(venv, work / "venv-setup.log")
    setup_s = round(time.perf_counter() - t0, 1)

    train_paths = [str(p) for p in normal_images(data)]
    if cfg.match_fit_images:
        # lineguard holds 20% of train/good out to calibrate its threshold (seed 0): the same fit set here.
        train_paths = [str(p) for p in split_calibration([Path(p) for p in train_paths], 0.2, 0)[0]]
    spec = {
        "weights": str(weights), "layers": list(cfg.layers), "input_size": list(size),
        "coreset_ratio": cfg.coreset_ratio, "num_neighbors": cfg.num_neighbors,
        "train_paths": train_paths, "test_paths": [str(s.path) for s in test_samples(data)],
        "train_batch": cfg.anomalib_train_batch, "batches": [1, 16], "trials": cfg.trials,
        "seconds_per_trial": cfg.seconds_per_trial, "seed": cfg.seed,
    }
    spec_path = work / "anomalib" / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    model_dir = work / "lineguard" / "model"
    lg = [sys.executable, "-m"]

    # 1. Fit both (lineguard first; each its own process).
    lg_train = run_measured(lg + [
        "lineguard.cli", "--log-level", "WARNING", "train", "--model", "patchcore", "--data", str(data),
        "--out", str(model_dir), "--backbone", BACKBONE, "--size", str(cfg.input_size),
        "--option", f"layers={','.join(cfg.layers)}", "--option", f"coreset_ratio={cfg.coreset_ratio}",
        "--option", f"num_neighbors={cfg.num_neighbors}", "--option", "progress=false",
    ], work / "lineguard" / "train.log", max_rss_mb=cfg.max_rss_mb)
    an_fit = run_measured([str(python), str(DRIVER), "fit", "--spec", str(spec_path), "--out",
                           str(work / "anomalib")], work / "anomalib" / "fit.log",
                          env={**OFFLINE_ENV, **ANOMALIB_FIT_ENV}, max_rss_mb=cfg.max_rss_mb)
    # 2. Score both: test set dumped, then throughput.
    lg_score = run_measured(lg + [
        "lineguard.benchmarks.anomalib_scoring", "score-lineguard", "--model", str(model_dir), "--data", str(data),
        "--out", str(work / "lineguard"), "--trials", str(cfg.trials), "--seconds-per-trial",
        str(cfg.seconds_per_trial)], work / "lineguard" / "score.log", max_rss_mb=cfg.max_rss_mb)
    an_score = run_measured([str(python), str(DRIVER), "score", "--spec", str(spec_path), "--model",
                             str(work / "anomalib"), "--out", str(work / "anomalib")],
                            work / "anomalib" / "score.log", env=OFFLINE_ENV, max_rss_mb=cfg.max_rss_mb)

    if cfg.onnx:  # after the timed steps, in its own process: it changes none of the figures above
        run_measured([str(python), str(DRIVER), "export", "--spec", str(spec_path), "--model", str(work / "anomalib"),
                      "--out", str(work / "anomalib")], work / "anomalib" / "export.log", env=OFFLINE_ENV,
                     max_rss_mb=cfg.max_rss_mb)

    manifest = Manifest.load(model_dir)
    lg_fit_info = manifest.extra
    lg_speed = json.loads((work / "lineguard" / "score.json").read_text())
    an_fit_info = json.loads((work / "anomalib" / "fit.json").read_text())
    an_speed = json.loads((work / "anomalib" / "score.json").read_text())

    def throughput(batches: dict[str, Any], key: str) -> dict[str, Any]:
        return {b: v[key] for b, v in batches.items()}

    lineguard = {
        **side_metrics(np.load(work / "lineguard" / "scores.npy"), np.load(work / "lineguard" / "maps.npy"), data,
                       size),
        "images_per_s_b1": lg_speed["batches"]["1"]["graph_images_per_s"]["best"],
        "images_per_s_b16": lg_speed["batches"]["16"]["graph_images_per_s"]["best"],
        "cpu_ms_per_image_b16": lg_speed["batches"]["16"]["graph_cpu_ms_per_image"],
        "fit_s": manifest.training.get("fit_seconds"),
        "peak_rss_mb": max(lg_train.peak_rss_mb, lg_score.peak_rss_mb),
        "throughput": throughput(lg_speed["batches"], "graph_images_per_s"),
        "throughput_with_preprocessing": throughput(lg_speed["batches"], "engine_images_per_s"),
        "fit_peak_rss_mb": _mb(lg_train.peak_rss_mb), "score_peak_rss_mb": _mb(lg_score.peak_rss_mb),
        "fit_command": {"wall_s": lg_train.wall_s, "cpu_s": lg_train.cpu_s,
                        "what": "lineguard train: fit, ONNX export, threshold calibration, manifest"},
        "score_command": {"wall_s": lg_score.wall_s, "cpu_s": lg_score.cpu_s},
        "config": {
            "runtime": f"ONNX Runtime {_ort_version()} ({', '.join(lg_speed['providers'])}, "
                       f"{lg_speed['ort_threads']} intra-op threads), ScoringEngine",
            "backbone": BACKBONE, "weights_sha256": sha, "layers": list(cfg.layers), "input_size": list(size),
            "coreset_ratio": lg_fit_info.get("coreset_ratio"), "coreset_method": lg_fit_info.get("coreset_method"),
            "num_neighbors": lg_fit_info.get("num_neighbors"), "embedding_dim": lg_fit_info.get("embedding_dim"),
            "n_fit_images": manifest.training.get("n_images"),
            "feature_extraction_s": lg_fit_info.get("feature_extraction_s"), "coreset_s": lg_fit_info.get("coreset_s"),
            "n_calibration_images": manifest.training.get("n_calibration"),
            "n_patches": lg_fit_info.get("n_patches"), "memory_bank_size": lg_fit_info.get("memory_bank_size"),
            "preprocessing": "cv2 INTER_AREA resize of uint8, ImageNet normalisation (in ScoringEngine)",
            "anomaly_map": "nearest upsampling, separable Gaussian blur sigma 4 (reflect padding)",
        },
    }
    anomalib = {
        **side_metrics(np.load(work / "anomalib" / "scores.npy"), np.load(work / "anomalib" / "maps.npy"), data, size),
        "images_per_s_b1": an_speed["batches"]["1"]["model_images_per_s"]["best"],
        "images_per_s_b16": an_speed["batches"]["16"]["model_images_per_s"]["best"],
        "cpu_ms_per_image_b16": an_speed["batches"]["16"]["model_images_per_s"]["cpu_ms_per_image"],
        "fit_s": an_fit_info["fit_s"],
        "peak_rss_mb": max(an_fit.peak_rss_mb, an_score.peak_rss_mb),
        "throughput": throughput(an_speed["batches"], "model_images_per_s"),
        "throughput_with_preprocessing": throughput(an_speed["batches"], "module_images_per_s"),
        "fit_peak_rss_mb": _mb(an_fit.peak_rss_mb), "score_peak_rss_mb": _mb(an_score.peak_rss_mb),
        "fit_command": {"wall_s": an_fit.wall_s, "cpu_s": an_fit.cpu_s, "what": "driver fit: fit, save the bank"},
        "score_command": {"wall_s": an_score.wall_s, "cpu_s": an_score.cpu_s},
        "config": {
            "runtime": f"PyTorch {an_speed['versions']['torch']} eager, inference_mode, "
                       f"{an_speed['torch_threads']} threads",
            "versions": an_speed["versions"], "venv": str(venv),
            "backbone": f"{BACKBONE} (torchvision nn.Module, same weights file)", "weights_sha256": sha,
            "layers": list(cfg.layers), "input_size": list(size), "coreset_ratio": cfg.coreset_ratio,
            "coreset_method": "anomalib KCenterGreedy", "seed": cfg.seed, "num_neighbors": cfg.num_neighbors,
            "fit_env": ANOMALIB_FIT_ENV,
            "embedding_dim": an_fit_info["embedding_dim"], "n_fit_images": an_fit_info["n_fit_images"],
            "n_patches": an_fit_info["n_patches"], "memory_bank_size": an_fit_info["memory_bank_size"],
            "train_batch": cfg.anomalib_train_batch,
            "build_s": an_fit_info.get("build_s"), "feature_extraction_s": an_fit_info["feature_extraction_s"],
            "coreset_s": an_fit_info["coreset_s"],
            "preprocessing": "anomalib PreProcessor: Resize(antialias) of [0,1] float, ImageNet normalisation",
            "anomaly_map": "nearest upsampling, kornia GaussianBlur2d sigma 4",
        },
    }
    export_json = work / "anomalib" / "export.json"
    onnx_info = json.loads(export_json.read_text()) if cfg.onnx and export_json.exists() else {}
    if cfg.onnx and onnx_info.get("file"):
        anomalib["onnx_runtime_throughput"] = onnx_throughput(
            work / "anomalib" / onnx_info["file"], normalised_batches(data, size), cfg.trials, cfg.seconds_per_trial)
    elif cfg.onnx:
        anomalib["onnx_runtime_throughput"] = {"error": onnx_info.get("error", "not exported")}

    result: dict[str, Any] = {
        "data": str(data), "work_dir": str(work), "lineguard": lineguard, "anomalib": anomalib,
        "throughput_ratio_b16": ratio(lineguard["images_per_s_b16"], anomalib["images_per_s_b16"]),
        "throughput_ratio_b1": ratio(lineguard["images_per_s_b1"], anomalib["images_per_s_b1"]),
        "throughput_ratio_b16_median": ratio(lineguard["throughput"]["16"]["median"],
                                             anomalib["throughput"]["16"]["median"]),
        "throughput_ratio_b16_with_preprocessing": ratio(lineguard["throughput_with_preprocessing"]["16"]["best"],
                                                         anomalib["throughput_with_preprocessing"]["16"]["best"]),
        "fit_time_ratio": ratio(lineguard["fit_s"], anomalib["fit_s"]),
        "peak_rss_ratio": ratio(lineguard["peak_rss_mb"], anomalib["peak_rss_mb"]),
        "image_auroc_delta": delta(lineguard["image_auroc"], anomalib["image_auroc"]),
        "pixel_auroc_delta": delta(lineguard["pixel_auroc"], anomalib["pixel_auroc"]),
        "cpu_count": os.cpu_count(), "venv_setup_s": setup_s,
        "load_average_1m_before": load_before, "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    result["acceptance"] = {
        "throughput_b16_at_least_2x": (result["throughput_ratio_b16"] or 0.0) >= 2.0,
        "image_auroc_not_lower": (result["image_auroc_delta"] or 0.0) >= 0.0,
        "pixel_auroc_not_lower": (result["pixel_auroc_delta"] or 0.0) >= 0.0,
    }
    result["acceptance"]["passed"] = all(result["acceptance"].values())
    return result


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
