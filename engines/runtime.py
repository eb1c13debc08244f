"""The scoring engine: manifest + ONNX graph run by ONNX Runtime on uint8 image batches.

This is the only engine code the processors use. It needs numpy, OpenCV and
onnxruntime: no torch. Provider preference: TensorRT, then CUDA, then CPU,
limited to what the installed onnxruntime offers; OpenVINO only when named
(``processor.providers``). TensorRT gets an optimisation
profile covering batch 1..max_batch, engine and timing caches in a writable
folder keyed by model, GPU and TensorRT version, and FP16 kernels only for an
FP16 graph (``provider_options``).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import onnx

from .manifest import MANIFEST_FILE, ONNX_FILE, Manifest, graph_precision, sha256_file
from .onnxruntime_flavour import ort

log = logging.getLogger(__name__)

# OpenVINO's provider (the onnxruntime-openvino wheel, the `openvino` flavour) is not in the preference: measured
# side by side with ORT's CPU provider (`lineguard bench engine --openvino`, docs/benchmarks.md) it was slower
# on PatchCore (0.81-0.89x FP32, 0.47-0.77x INT8) and level on EfficientAD FP32, so even where it is installed
# the CPU provider scores unless `processor.providers` names OpenVINO.
_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    have = set(ort.get_available_providers())
    return [p for p in _PREFERENCE if p in have]


UNKNOWN_GPU = "unknown-gpu"  # cache-key tokens where the GPU or TensorRT cannot be asked (no GPU here)
UNKNOWN_TENSORRT = "unknown"


def default_trt_cache_dir() -> Path:
    """Where built TensorRT engines go when ``processor.trt_cache_dir`` is unset: the user's cache folder,
    never the model folder (model folders are mounted read-only in deployments)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineguard" / "tensorrt"


def _token(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def trt_cache_key(model_sha256: str, gpu_name: str, tensorrt_version: str) -> str:
    """The cache folder's name: a serialised engine (and a timing cache) is valid only for the graph, the GPU
    model and the TensorRT version that built it; ORT's own file names carry the compute capability but
    neither the GPU nor TensorRT's version, so a driver or GPU change would otherwise load a stale engine."""
    return f"{model_sha256[:16]}-{_token(gpu_name)}-trt{_token(tensorrt_version)}"


def provider_options(name: str, *, input_name: str, height: int, width: int, max_batch: int, precision: str,
                     device_id: int = 0, trt_cache: Path | None = None, threads: int = 0) -> dict[str, str]:
    """ONNX Runtime options for provider ``name`` (pure: no GPU needed to build or test them).

    ``input_name`` and ``height``/``width`` are the graph's image input; ``max_batch`` the largest batch the
    processor's batcher flushes; ``precision`` the graph's (``graph_precision``); ``trt_cache`` the writable,
    keyed folder for TensorRT's engine and timing caches (None: no cache, engines built at every load);
    ``threads`` the engine's intra-op threads (0: all cores), which OpenVINO takes as its own.
    """
    if name == "TensorrtExecutionProvider":
        def shape(batch: int) -> str:
            return f"{input_name}:{batch}x3x{height}x{width}"

        options = {
            "device_id": str(device_id),
            # One optimisation profile spanning every batch the batcher can flush, tuned for the full batch a
            # busy line sends. Without it TRT builds for the first shape it sees (warm-up's batch 1) and
            # rebuilds, for minutes, whenever a larger batch arrives.
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch),
            # FP16 kernels only for a graph exported as FP16 (`lineguard export --fp16`), whose threshold was
            # calibrated on FP16 scores; the FP32 graph keeps FP32 scores and its FP32 threshold.
            "trt_fp16_enable": "True" if precision == "fp16" else "False",
        }
        if trt_cache is not None:
            options.update({
                "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache),
                # Layer timings survive too: a rebuild (new profile, new model version) skips re-timing tactics.
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(trt_cache),
            })
        return options
    if name == "CUDAExecutionProvider":  # also TensorRT's fallback for the nodes TRT does not take
        return {
            "device_id": str(device_id),
            # Batches vary from 1 to max_batch: grow the arena by what is asked, not to the next power of two,
            # which on a GPU shared by several processors strands memory the others need.
            "arena_extend_strategy": "kSameAsRequested",
            # HEURISTIC, not EXHAUSTIVE: EXHAUSTIVE benchmarks every convolution on the first run of each new
            # input shape, and dynamic batching makes up to max_batch shapes: a stall of seconds in production
            # at each first occurrence. cuDNN's heuristic picks without timing runs.
            "cudnn_conv_algo_search": "HEURISTIC",
        }
    if name == "OpenVINOExecutionProvider":
        options = {
            "device_type": "CPU",
            # FP32, not the CPU plugin's default of BF16 on CPUs that have it: the threshold was calibrated on
            # FP32 scores. An FP16 graph keeps its own precision (ACCURACY; the CPU takes no other).
            "precision": "ACCURACY" if precision == "fp16" else "FP32",
            # OpenVINO ignores ORT's intra_op_num_threads: the same limit, so it leaves the host's other
            # threads (decoding, Kafka I/O) their cores as the CPU provider does.
            "num_of_threads": str(threads or (os.cpu_count() or 1)),
        }
        if precision == "int8":
            # OpenVINO 2025.4's low-precision transformations move the backbone's last DequantizeLinear past
            # PatchCore's AveragePool (3x3, padding counted) and pad in the uint8 domain, where 0 is not 0.0
            # (zero point ~135): border patches go wrong and scores came out 3-6x the CPU provider's
            # (tests/test_openvino.py). Without them OpenVINO runs the QDQ graph correctly, in float.
            options["load_config"] = json.dumps({"CPU": {"LP_TRANSFORMS_MODE": "NO"}})
        return options
    return {}


@functools.cache
def gpu_name(device_id: int) -> str:
    """The GPU's model name (``nvidia-smi``), or :data:`UNKNOWN_GPU` where there is none to ask."""
    # ORT's device_id counts the devices CUDA_VISIBLE_DEVICES leaves visible; nvidia-smi -i takes the entry.
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = visible[device_id] if device_id < len(visible) else str(device_id)
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", index],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip().splitlines()[0].strip() or UNKNOWN_GPU
    except (OSError, subprocess.SubprocessError, IndexError):
        return UNKNOWN_GPU


@functools.cache
def tensorrt_version() -> str:
    """The TensorRT version ORT's TensorRT provider would load, or :data:`UNKNOWN_TENSORRT`."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-libs", "tensorrt-cu13-libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for library in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):  # a system install
        try:
            return f"lib{ctypes.CDLL(library).getInferLibVersion()}"
        except (OSError, AttributeError):
            continue
    return UNKNOWN_TENSORRT


def graph_input_name(onnx_path: Path) -> str:
    """The graph's image input (the first input that is not an initializer)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def session_providers(wanted: list[str], onnx_path: Path, manifest: Manifest, *, precision: str,
                      max_batch: int = 16, device_id: int = 0, trt_cache_dir: Path | None = None,
                      model_sha256: str | None = None, threads: int = 0) -> list[tuple[str, dict[str, str]]]:
    """The ``providers`` list :class:`ScoringEngine` hands ONNX Runtime: ``wanted`` with their options."""
    trt_cache, input_name = None, "image"
    if "TensorrtExecutionProvider" in wanted:  # only TRT needs the input name and the cache folder
        input_name = graph_input_name(onnx_path)
        key = trt_cache_key(model_sha256 or sha256_file(onnx_path), gpu_name(device_id), tensorrt_version())
        trt_cache = Path(trt_cache_dir or default_trt_cache_dir()) / key
        try:
            trt_cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # still scores, but builds its engines at every load: say so
            log.warning("TensorRT cache %s is not writable (%s): engines are rebuilt at every load", trt_cache, exc)
            trt_cache = None
    return [(name, provider_options(name, input_name=input_name, height=manifest.input.height,
                                    width=manifest.input.width, max_batch=max_batch, precision=precision,
                                    device_id=device_id, trt_cache=trt_cache, threads=threads))
            for name in wanted]


def normalisation_table(manifest: Manifest) -> np.ndarray:
    """3 x 256 float32: the normalised value of every uint8 level, per channel: ``(v - 255 mean) / (255 std)``."""
    mean = np.asarray(manifest.input.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(manifest.input.std, dtype=np.float32) * 255.0)
    return (np.arange(256, dtype=np.float32)[None, :] - mean[:, None]) * inv_std[:, None]


def preprocess(images: np.ndarray | list[np.ndarray], manifest: Manifest) -> np.ndarray:
    """uint8 ``N x H x W x 3`` (or a list of differently sized images) -> float32 ``N x 3 x h x w``.

    Resizing is per image (OpenCV, area interpolation when shrinking). Scaling, normalisation and the
    HWC -> CHW transpose are one table lookup per channel plane, written straight into the batch:
    measured 4x faster than the float arithmetic over the whole batch (6.6 against 27 ms for 16 images
    at 256 px), and bit-identical to it.
    """
    h, w = manifest.input.height, manifest.input.width
    table = normalisation_table(manifest)
    batch = np.empty((len(images), 3, h, w), dtype=np.float32)
    for i, image in enumerate(images):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[:2] != (h, w):
            shrink = image.shape[0] > h or image.shape[1] > w
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        for channel, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
            np.take(table[channel], plane, out=batch[i, channel])
    return batch


class ScoringEngine:
    """Scores uint8 image batches with an exported lineguard model.

    ``score(images) -> (scores[N], anomaly_maps[N, 1, h, w])``; thresholds
    are applied by the caller from ``manifest.thresholds``.
    """

    def __init__(self, model_dir: str | Path, providers: list[str] | None = None,
                 threads: int = 0, warmup: bool = True, onnx_file: str = ONNX_FILE, spin: bool = False, *,
                 max_batch: int = 16, device_id: int = 0, trt_cache_dir: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.load(self.model_dir)
        self.onnx_file = onnx_file
        self.max_batch = max_batch
        # A derived graph (model.int8.onnx or model.fp16.onnx, `lineguard export --int8/--fp16`) scores on a
        # slightly different scale; the threshold rescaled for it is in the manifest's extra under its
        # precision and replaces the FP32 one here.
        self.precision = graph_precision(self.manifest, onnx_file)
        derived = self.manifest.extra.get(self.precision) if onnx_file != ONNX_FILE else None
        if derived and derived.get("file") == onnx_file and derived.get("threshold") is not None:
            self.manifest.thresholds.value = float(derived["threshold"])
        onnx_path = self.model_dir / onnx_file
        if not onnx_path.exists():
            raise FileNotFoundError(f"{onnx_path} is missing (the folder has a {MANIFEST_FILE} but no graph)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Explicit threads: ORT's default spins one thread per core, which starves the
        # event loop and the decoder threads that share the host with it.
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # ORT's idle workers spin for a while after each run. In a processor the cores are
        # shared with JPEG decoding, Kafka I/O and heatmap rendering, so spinning only
        # burns what they need; a dedicated scoring box can turn it back on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        wanted = providers or available_providers()
        # The graph's sha256 keys TensorRT's cache; computed from the file where the manifest lacks it.
        recorded_sha = self.manifest.digests().get(onnx_file) or (derived or {}).get("sha256")
        self.session = ort.InferenceSession(
            str(onnx_path),
            sess_options=options,
            providers=session_providers(wanted, onnx_path, self.manifest, precision=self.precision,
                                        max_batch=max_batch, device_id=device_id,
                                        trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else None,
                                        model_sha256=recorded_sha, threads=threads),
        )
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.load_s = 0.0
        if warmup:
            start = time.perf_counter()
            # Both ends of the TensorRT profile: batch 1 builds (or loads) the engine, max_batch proves the
            # profile covers it and grows the GPU arena to its peak, so the first full production batch neither
            # builds an engine nor allocates. The CPU provider compiles nothing per shape: batch 1 will do.
            sizes = [1] if self.providers[0] == "CPUExecutionProvider" else sorted({1, max_batch})
            h, w = self.manifest.input.height, self.manifest.input.width
            for size in sizes:
                self.score(np.zeros((size, h, w, 3), np.uint8))
            self.load_s = time.perf_counter() - start

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def threshold(self) -> float:
        return self.manifest.thresholds.value

    def score_tensor(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(["score", "anomaly_map"], {self.input_name: tensor})
        return scores.reshape(-1).astype(np.float32), maps.astype(np.float32)

    def score(self, images: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            h, w = self.manifest.input.height, self.manifest.input.width
            return np.zeros(0, np.float32), np.zeros((0, 1, h, w), np.float32)
        return self.score_tensor(preprocess(images, self.manifest))
