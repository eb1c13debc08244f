"""``lineguard bench gpu``: the GPU check, in one go, on a machine with an NVIDIA GPU (a few minutes).

1. What this host has: ONNX Runtime's flavour and providers, the GPU (nvidia-smi), TensorRT. Without a CUDA
   provider, a visible GPU or TensorRT it stops there with the reason (exit 3): it never reports CPU figures
   as a GPU's.
2. The models: the folders given (``--model``, PatchCore and EfficientAD), copied to a work folder so nothing
   is written into them; or, without any, both fitted on a synthetic washer dataset (the train extra). Each
   gets its FP16 graph (``lineguard export --fp16``) where it has none.
3. Parity: the same images scored by three legs, ``cpu-fp32`` (the reference), ``cuda-fp32`` and
   ``tensorrt-fp16`` (the FP16 graph with its own threshold, on TensorRT's FP16 kernels). Scores and maps
   must stay within a tolerance of the CPU's and every verdict (score > that leg's threshold) must be the same.
4. Speed: images/s at batch 1, 16 and 64 per GPU leg (and batch 16 on the CPU for scale), timed by
   :mod:`.engine_speed` as ``lineguard bench engine`` times them. The engine build is apart: ``build_s`` is
   the first load with an empty TensorRT cache (session, engine build, warm-up at batch 1 and 64),
   ``cached_load_s`` the next load, from the cache, as a restarted processor pays it.

The JSON (``--out``) keeps it all; ``passed`` is the parity verdict; exit 1 when it failed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.engines.manifest import FP16_FILE, ONNX_FILE, Manifest
from lineguard.engines.onnxruntime_flavour import installed_flavours, ort
from lineguard.engines.runtime import ScoringEngine, tensorrt_version

from . import engine_speed
from .report import write_report

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# leg -> (providers in order, graph); the first provider must be the one that takes the graph.
LEGS: dict[str, tuple[list[str], str]] = {
    "cpu-fp32": ([CPU], ONNX_FILE),
    "cuda-fp32": ([CUDA, CPU], ONNX_FILE),
    "tensorrt-fp16": ([TRT, CUDA, CPU], FP16_FILE),
}
REFERENCE = "cpu-fp32"
BATCHES = (1, 16, 64)
CPU_BATCHES = (16,)  # the CPU leg is timed for scale only: batch 64 of EfficientAD would take most of the budget
# Largest score difference from the CPU's, relative to its score. The CUDA provider runs FP32 convolutions and
# matmuls on TF32 tensor cores by default (10-bit mantissa), hence not 1e-5; FP16 keeps 10 bits throughout.
SCORE_RTOL = {"cuda-fp32": 1e-2, "tensorrt-fp16": 5e-2}
MAP_RTOL = {"cuda-fp32": 1e-2, "tensorrt-fp16": 5e-2}  # of the CPU map's range over the batch
INSTALL = "install lineguard[gpu,tensorrt] (pip install '.[gpu,tensorrt]') in a virtualenv without another onnxruntime"


class NoGpu(RuntimeError):
    """Nothing to measure on this host: the message says why (exit 3, nothing written)."""


def nvidia_smi() -> list[str]:
    """One line per visible GPU (name, driver, memory), or none where nvidia-smi is missing or fails."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def gpu_problem(providers: list[str], gpus: Callable[[], list[str]] = nvidia_smi,
                need_tensorrt: bool = True) -> str | None:
    """Why this host cannot run the check, or None."""
    if CUDA not in providers:
        flavour = ", ".join(installed_flavours()) or "no flavour"
        return (f"no GPU to check: this ONNX Runtime ({flavour} {ort.__version__}) has no CUDA provider, only "
                f"{', '.join(providers)}; on a machine with an NVIDIA GPU, {INSTALL}")
    if not gpus():
        return ("no GPU to check: no NVIDIA GPU is visible (nvidia-smi is missing or lists none); the host needs "
                "an NVIDIA driver >= 580 (CUDA 13) and, in a container, the NVIDIA Container Toolkit")
    if need_tensorrt and TRT in providers:
        try:
            ctypes.CDLL("libnvinfer.so.10")  # loaded already by the flavour module when the wheel is there
        except OSError:
            return f"TensorRT 10 (libnvinfer.so.10) cannot be loaded: {INSTALL}, or run with --no-tensorrt"
    elif need_tensorrt:
        return f"this ONNX Runtime has no TensorRT provider: {INSTALL}, or run with --no-tensorrt"
    return None


def prepare_models(models: list[str], data: str | None, work: Path, *, size: int = 256,
                   efficientad_steps: int = 40) -> tuple[list[Path], str | None]:
    """Copies of ``models`` in ``work`` (or PatchCore and EfficientAD fitted there), each with an FP16 graph."""
    from lineguard.engines.fp16 import export_fp16

    folders = []
    if models:
        for i, model in enumerate(models):
            folders.append(Path(shutil.copytree(model, work / "models" / f"{i}-{Path(model).name}",
                                                ignore=shutil.ignore_patterns(".trt_cache"), dirs_exist_ok=True)))
    else:
        if importlib.util.find_spec("torch") is None:
            raise NoGpu("no models: pass --model DIR (a PatchCore and an EfficientAD folder) and --data, or install "
                        "the train extra (make train-deps) to fit both on synthetic images here")
        from lineguard.engines.training import train
        from lineguard.producers.synthetic import SyntheticCamera

        data = str(work / "data")
        SyntheticCamera(product="washer", size=size, seed=0).write_mvtec(data, n_train=60, n_test_good=32,
                                                                          n_test_defect=32)
        for kind, options in (("patchcore", {"input_size": (size, size)}),
                              ("efficientad", {"input_size": size, "steps": efficientad_steps})):
            started = time.perf_counter()
            folders.append(train(kind, data, work / "models" / kind, name="washer", version="gpu-check",
                                 progress=False, **options).parent)
            print(f"fitted {kind} in {time.perf_counter() - started:.1f} s", flush=True)
    for folder in folders:
        if not (folder / FP16_FILE).exists():
            export_fp16(folder, data)  # data None: the images the manifest says the model was trained on
    return folders, data


def _images(data: str | None, size: tuple[int, int], count: int) -> np.ndarray:
    return np.stack(engine_speed._images(data, size, count))


def _parity(model: Path, legs: dict[str, tuple[list[str], str]], images: np.ndarray, engine_options: dict[str, Any],
            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Each leg's scores on ``images`` against the reference leg's; each leg's first (cold) load time."""
    scored: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    loads: dict[str, dict[str, Any]] = {}
    for leg, (providers, onnx_file) in legs.items():
        started = time.perf_counter()
        engine = ScoringEngine(model, providers=providers, onnx_file=onnx_file, **engine_options)
        loads[leg] = {"providers": engine.providers, "onnx_file": onnx_file, "threshold": engine.threshold,
                      "build_s": round(time.perf_counter() - started, 3)}
        if engine.providers[0] != providers[0]:  # ORT fell back to another provider: its figures would lie
            raise NoGpu(f"{leg}: {providers[0]} could not take {model.name}/{onnx_file} (ONNX Runtime fell back to "
                        f"{engine.providers[0]}; its log above says why)")
        scores, maps = engine.score(images)
        scored[leg] = (scores, maps, scores > engine.threshold)
        del engine  # its GPU memory back before the next leg loads
    ref_scores, ref_maps, ref_verdicts = scored[REFERENCE]
    map_range = max(float(ref_maps.max() - ref_maps.min()), 1e-12)
    parity = {}
    for leg, (scores, maps, verdicts) in scored.items():
        if leg == REFERENCE:
            continue
        score_diff = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
        map_diff = float(np.max(np.abs(maps - ref_maps))) / map_range
        mismatches = int(np.sum(verdicts != ref_verdicts))
        parity[leg] = {"score_rel_diff_max": round(score_diff, 6), "map_rel_diff_max": round(map_diff, 6),
                       "verdict_mismatches": mismatches,
                       "ok": score_diff <= SCORE_RTOL[leg] and map_diff <= MAP_RTOL[leg] and mismatches == 0}
    parity["n_images"], parity["n_defective"] = len(images), int(ref_verdicts.sum())
    return parity, loads


def run(models: list[str] | None = None, data: str | None = None, *, device_id: int = 0,
        batches: tuple[int, ...] = BATCHES, trials: int = 3, seconds_per_trial: float = 0.5,
        tensorrt: bool = True, size: int = 256, efficientad_steps: int = 40,
        work_dir: str | Path | None = None) -> dict[str, Any]:
    """The whole check (see the module's docstring); raises :class:`NoGpu` before any work where it cannot run."""
    started = time.perf_counter()
    providers = ort.get_available_providers()
    problem = gpu_problem(providers, need_tensorrt=tensorrt)
    if problem:
        raise NoGpu(problem)
    legs = {k: v for k, v in LEGS.items() if tensorrt or k != "tensorrt-fp16"}
    with tempfile.TemporaryDirectory(prefix="lineguard-gpu-check-") as tmp:
        work = Path(work_dir or tmp)
        folders, data = prepare_models(list(models or []), data, work, size=size,
                                       efficientad_steps=efficientad_steps)
        result: dict[str, Any] = {
            "gpus": nvidia_smi(), "device_id": device_id, "onnxruntime": ort.__version__,
            "flavours": installed_flavours(), "providers_available": providers,
            "tensorrt": tensorrt_version() if tensorrt else None, "cpu_count": os.cpu_count(),
            "batches": list(batches), "trials": trials, "seconds_per_trial": seconds_per_trial,
            "data": (data or "random noise: pass --data for verdicts that mean something") if models
                    else "synthetic washer (models fitted here)", "models": [],
        }
        for folder in folders:
            manifest = Manifest.load(folder)
            # A fresh TensorRT cache per model: the parity leg's load is the cold build, the timed one the cached load.
            options = {"max_batch": max(batches), "device_id": device_id, "trt_cache_dir": work / "trt" / folder.name}
            shutil.rmtree(options["trt_cache_dir"], ignore_errors=True)  # a kept --work-dir: build_s stays a build
            images = _images(data, (manifest.input.height, manifest.input.width), max(batches))
            parity, loads = _parity(folder, legs, images, options)
            entry: dict[str, Any] = {"kind": manifest.kind, "name": manifest.name, "model": str(folder),
                                     "parity": parity, "legs": loads}
            for leg, (leg_providers, onnx_file) in legs.items():
                timed = engine_speed.run(folder, data, batches=CPU_BATCHES if leg == REFERENCE else batches,
                                         onnx_file=onnx_file, providers=leg_providers, trials=trials,
                                         seconds_per_trial=seconds_per_trial, engine_options=options)
                loads[leg]["cached_load_s"] = timed["load_s"]
                loads[leg]["images_per_s"] = {b: {"engine": r["engine_images_per_s"], "graph": r["graph_images_per_s"]}
                                              for b, r in timed["batches"].items()}
                print(f"{manifest.kind} {leg}: " + ", ".join(
                    f"batch {b} {r['engine']['best']} img/s" for b, r in loads[leg]["images_per_s"].items()), flush=True)
            entry["passed"] = all(p["ok"] for leg, p in parity.items() if leg in legs)
            result["models"].append(entry)
    result["passed"] = all(m["passed"] for m in result["models"])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    out = [f"GPU {result['device_id']}: {'; '.join(result['gpus'])}. ONNX Runtime {result['onnxruntime']} "
           f"({', '.join(result['flavours'])}), TensorRT {result['tensorrt']}; {result['wall_s']} s in all. "
           f"Images: {result['data']}.", ""]
    for m in result["models"]:
        parity = m["parity"]
        batches = sorted({b for load in m["legs"].values() for b in load["images_per_s"]}, key=int)
        out += [f"**{m['kind']}** `{m['name']}`: {parity['n_images']} images, {parity['n_defective']} defective on "
                f"the CPU; {'verdicts identical' if m['passed'] else '**PARITY FAILED**'}", "",
                "| leg | provider | build s | cached load s | " + " | ".join(f"img/s b{b}" for b in batches)
                + " | score Δ vs CPU | map Δ | verdicts differing |",
                "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in batches) + " | ---: | ---: | ---: |"]
        for leg, load in m["legs"].items():
            speed = [f"{load['images_per_s'][b]['engine']['best']:.1f}" if b in load["images_per_s"] else "–"
                     for b in batches]
            p = parity.get(leg)
            diffs = (f"{100 * p['score_rel_diff_max']:.3f}% | {100 * p['map_rel_diff_max']:.3f}% | "
                     f"{p['verdict_mismatches']}") if p else "reference | | "
            out.append(f"| {leg} | {load['providers'][0]} | {load['build_s']} | {load['cached_load_s']} | "
                       + " | ".join(speed) + f" | {diffs} |")
        out.append("")
    out.append(f"Parity: {'passed' if result['passed'] else 'FAILED'} (score within "
               f"{', '.join(f'{100 * v:g}% for {k}' for k, v in SCORE_RTOL.items())} of the CPU's, same verdicts).")
    return "\n".join(out)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown)
