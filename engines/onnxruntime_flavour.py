"""The one place the scoring path imports ONNX Runtime: which flavour is installed, and its GPU libraries.

ONNX Runtime comes as several wheels that all install the same ``onnxruntime`` module: ``onnxruntime``
(CPU), ``onnxruntime-gpu`` (CUDA and TensorRT) and ``onnxruntime-openvino``. lineguard depends on none of
them; its extras choose one (``pip install 'lineguard[cpu]'``, ``[gpu]``, ``[gpu,tensorrt]``,
``[openvino]``; pyproject.toml). Without any, ``import onnxruntime`` fails with a bare ModuleNotFoundError
deep in a processor's start: :data:`MISSING` says what to install instead. With two, the last one installed
wrote the module's files over the other's, and the providers silently become its own (the CUDA provider
disappears when the CPU wheel lands after the GPU one): a warning names them.

The GPU wheel's providers link CUDA, cuDNN and TensorRT libraries that pip installs as separate wheels
(``nvidia-*``, ``tensorrt-cu13-libs``) outside the loader's search path, so they are loaded here, before any
session asks for them: without that ORT logs that it could not load the CUDA provider and scores on the CPU.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import warnings
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
MISSING = ("no ONNX Runtime is installed: lineguard scores with one flavour of it, chosen at install time: "
           "pip install 'lineguard[cpu]' (or '.[cpu]' in a checkout; `make venv` does this), "
           "'lineguard[gpu]' for CUDA (add ',tensorrt' for TensorRT), or 'lineguard[openvino]'; "
           "see docs/deployment.md#onnx-runtime-flavours")
# The TensorRT libraries the TensorRT provider (libonnxruntime_providers_tensorrt.so) links by soname.
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


class OnnxRuntimeMissing(ModuleNotFoundError):
    """No onnxruntime module: raised with :data:`MISSING` in place of Python's bare message."""


def installed_flavours() -> list[str]:
    """The ONNX Runtime distributions installed here (more than one means one overwrote the other)."""
    found = []
    for name in FLAVOURS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def preload_tensorrt() -> list[str]:
    """Load TensorRT 10 from the ``tensorrt_libs`` wheel, so the TensorRT provider's links resolve by soname.

    Returns the libraries loaded (none where that wheel is absent: a system TensorRT on the loader's path
    still works)."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)))
    loaded = []
    for name in TENSORRT_LIBRARIES:  # libnvinfer first: the parser links it
        if (folder / name).is_file():
            ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
            loaded.append(name)
    return loaded


def _preload_gpu_libraries(ort: ModuleType) -> None:
    """CUDA and cuDNN from the ``nvidia-*`` wheels (ORT's own ``preload_dlls``), then TensorRT.

    A failure is logged, not raised: ORT then falls back to the providers it can load (it says which),
    and a GPU-flavoured install on a host without a GPU still scores on its CPU provider."""
    try:
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        preload_tensorrt()
    except (OSError, RuntimeError) as exc:
        log.warning("could not load the GPU libraries of onnxruntime-gpu (%s): "
                    "ONNX Runtime will fall back to the providers it can load", exc)


def load() -> ModuleType:
    """``import onnxruntime``, with a message that says what to install when there is none."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise  # a broken install (a missing dependency of onnxruntime): pip's problem, shown as is
        raise OnnxRuntimeMissing(MISSING, name="onnxruntime") from None
    flavours = installed_flavours()
    if len(flavours) > 1:
        warnings.warn(f"{' and '.join(flavours)} are installed together: they share the onnxruntime module, "
                      f"so its providers are whichever was installed last ({ort.get_available_providers()}); "
                      "uninstall all of them and install one lineguard extra", RuntimeWarning, stacklevel=2)
    if "onnxruntime-gpu" in flavours:
        _preload_gpu_libraries(ort)
    return ort


ort = load()
