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

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .measure import run_measured
from .report import write_report

# Pinned like the main venv's torch so both sides run the same kernels; anomalib's own dependencies
# (lightning, kornia, timm, FrEIA, ...) come with it from PyPI: its PatchCore imports with those alone.
# onnx only serves the optional export of anomalib's fitted model (torch.onnx needs it).
ANOMALIB_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "anomalib==2.7.0", "onnx")
DRIVER = Path(__file__).with_name("anomalib_driver.py")
STAMP = ".lineguard-stamp"
BACKBONE = "mobilenet_v2"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONNOUSERSITE": "1"}
# anomalib's KCenterGreedy allocates a fresh N x 253 float tensor (29 MB here) per pick. With glibc's default
# dynamic mmap threshold these come from the heap, which fragments: the fit process grew by ~17 MB per pick
# (20 GB and an OOM kill at pick 1060 of 2866). A fixed 1 MiB threshold keeps every such buffer an mmap
# returned on free; RSS then stays flat. Applied to anomalib's fit step only, the one that needs it.
ANOMALIB_FIT_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def repo_root() -> Path:
    """The checkout this module lives in (benchmarks/ is at its top)."""
    return Path(__file__).resolve().parents[1]


def default_venv() -> Path:
    return Path(os.environ.get("LINEGUARD_ANOMALIB_VENV") or repo_root() / ".cache" / "anomalib-venv")


def base_python() -> str:
    """The interpreter the main venv was made from: the anomalib venv gets the same python3."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(venv: Path, log: Path | None = None) -> Path:
    """Create ``venv`` with anomalib installed, once: a stamp naming the requirements marks it done.

    Returns the venv's python. pip's cache makes a re-creation cheap after the first download.
    """
    python = venv / "bin" / "python"
    wanted = "\n".join(ANOMALIB_REQUIREMENTS)
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    out = open(log, "a") if log else None
    try:
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        *ANOMALIB_REQUIREMENTS], check=True, stdout=out, stderr=out)
        # The import the driver needs, so a broken install fails here with pip's log, not mid-benchmark.
        check = "import anomalib, torch, torchvision; from anomalib.models import Patchcore"
        subprocess.run([str(python), "-c", check],
                       check=True, stdout=out, stderr=out, env={**os.environ, **OFFLINE_ENV})
    finally:
        if out:
            out.close()
    stamp.write_text(wanted)
    return python


# -- lineguard's scoring step (run in its own process: python -m lineguard.benchmarks.anomalib_compare) --------

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


# -- metrics, with lineguard's code for both sides ----------------------------------------------------------

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


# -- the comparison --------------------------------------------------------------------------------------

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


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


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
        "lineguard.benchmarks.anomalib_compare", "score-lineguard", "--model", str(model_dir), "--data", str(data),
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
            work / "anomalib" / onnx_info["file"], _normalised_batches(data, size), cfg.trials, cfg.seconds_per_trial)
    elif cfg.onnx:
        anomalib["onnx_runtime_throughput"] = {"error": onnx_info.get("error", "not exported")}

    result: dict[str, Any] = {
        "data": str(data), "work_dir": str(work), "lineguard": lineguard, "anomalib": anomalib,
        "throughput_ratio_b16": _ratio(lineguard["images_per_s_b16"], anomalib["images_per_s_b16"]),
        "throughput_ratio_b1": _ratio(lineguard["images_per_s_b1"], anomalib["images_per_s_b1"]),
        "throughput_ratio_b16_median": _ratio(lineguard["throughput"]["16"]["median"],
                                              anomalib["throughput"]["16"]["median"]),
        "throughput_ratio_b16_with_preprocessing": _ratio(lineguard["throughput_with_preprocessing"]["16"]["best"],
                                                          anomalib["throughput_with_preprocessing"]["16"]["best"]),
        "fit_time_ratio": _ratio(lineguard["fit_s"], anomalib["fit_s"]),
        "peak_rss_ratio": _ratio(lineguard["peak_rss_mb"], anomalib["peak_rss_mb"]),
        "image_auroc_delta": _delta(lineguard["image_auroc"], anomalib["image_auroc"]),
        "pixel_auroc_delta": _delta(lineguard["pixel_auroc"], anomalib["pixel_auroc"]),
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


def _delta(a: float | None, b: float | None) -> float | None:
    return round(a - b, 4) if a is not None and b is not None else None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _normalised_batches(data: Path, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The throughput batches as lineguard feeds them (ImageNet-normalised float32), for anomalib's ONNX graph."""
    from lineguard.engines.common.backbones import IMAGENET_MEAN, IMAGENET_STD
    from lineguard.engines.manifest import InputSpec, Manifest, Thresholds
    from lineguard.engines.runtime import preprocess

    from .engine_speed import _images

    spec = Manifest(kind="patchcore", name="", version="", thresholds=Thresholds(0.0, ""),
                    input=InputSpec(size[0], size[1], list(IMAGENET_MEAN), list(IMAGENET_STD)))
    return {b: preprocess(_images(data, size, b), spec) for b in (1, 16)}


def _num(value: float | int | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    lg, an = result["lineguard"], result["anomalib"]
    rows = [
        ("image AUROC", lg["image_auroc"], an["image_auroc"], 4, "delta"),
        ("pixel AUROC", lg["pixel_auroc"], an["pixel_auroc"], 4, "delta"),
        ("PRO (30% FPR)", lg["pro"], an["pro"], 4, "delta"),
        ("images/s, batch 1 (best)", lg["images_per_s_b1"], an["images_per_s_b1"], 1, "ratio"),
        ("images/s, batch 16 (best)", lg["images_per_s_b16"], an["images_per_s_b16"], 1, "ratio"),
        ("images/s, batch 16 (median)", lg["throughput"]["16"]["median"], an["throughput"]["16"]["median"], 1,
         "ratio"),
        ("images/s, batch 16, with pre-processing", lg["throughput_with_preprocessing"]["16"]["best"],
         an["throughput_with_preprocessing"]["16"]["best"], 1, "ratio"),
        ("CPU ms per image, batch 16", lg["cpu_ms_per_image_b16"], an["cpu_ms_per_image_b16"], 1, "ratio"),
        ("fit time (s)", lg["fit_s"], an["fit_s"], 2, "ratio"),
        ("peak RSS, fit process (MB)", lg["fit_peak_rss_mb"], an["fit_peak_rss_mb"], 0, "ratio"),
        ("peak RSS, scoring process (MB)", lg["score_peak_rss_mb"], an["score_peak_rss_mb"], 0, "ratio"),
        ("memory bank (patches)", lg["config"]["memory_bank_size"], an["config"]["memory_bank_size"], 0, "ratio"),
        ("fit images", lg["config"]["n_fit_images"], an["config"]["n_fit_images"], 0, "ratio"),
    ]
    lines = [f"### PatchCore: lineguard vs anomalib {an['config']['versions']['anomalib']} on `{result['data']}`", "",
             f"MobileNetV2 ({', '.join(lg['config']['layers'])}), {lg['config']['input_size'][0]} px, "
             f"coreset {lg['config']['coreset_ratio']:.0%}; lineguard: {lg['config']['runtime']}; "
             f"anomalib: {an['config']['runtime']}.", "",
             "| | lineguard | anomalib | lineguard / anomalib |", "| --- | ---: | ---: | ---: |"]
    for name, a, b, digits, kind in rows:
        compare = f"{_delta(a, b):+.4f}" if kind == "delta" and a is not None and b is not None else (
            f"{_ratio(a, b):.2f}x" if kind == "ratio" and _ratio(a, b) is not None else "n/a")
        lines.append(f"| {name} | {_num(a, digits)} | {_num(b, digits)} | {compare} |")
    onnx = an.get("onnx_runtime_throughput")
    if onnx and "error" not in onnx:
        lines.append(f"\nanomalib's fitted model exported to ONNX and run in the same ONNX Runtime settings: "
                     f"{onnx['1']['best']:.1f} images/s at batch 1, {onnx['16']['best']:.1f} at batch 16 "
                     f"(lineguard / that: {_ratio(lg['images_per_s_b16'], onnx['16']['best'])}x at batch 16).")
    elif onnx:
        lines.append(f"\nanomalib ONNX export failed: {onnx['error']}")
    acc = result["acceptance"]
    verdict = "met" if acc["passed"] else "NOT met"
    lines += ["", f"Acceptance (>= 2x images/s at batch 16, image and pixel AUROC not lower): **{verdict}** "
                  f"(batch-16 ratio {result['throughput_ratio_b16']}x, "
                  f"image AUROC {_signed(result['image_auroc_delta'])}, "
                  f"pixel AUROC {_signed(result['pixel_auroc_delta'])}). Load average (1 min) "
                  f"{result['load_average_1m_before']} before, {result['load_average_1m_after']} after, "
                  f"{result['cpu_count']} CPUs.", ""]
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def write_outputs(result: dict[str, Any], json_path: str | Path | None) -> None:
    write_report(result, json_path, markdown)


def main(argv: list[str] | None = None) -> int:
    """The lineguard scoring step, run by :func:`run` in a process of its own."""
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
