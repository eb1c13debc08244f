"""ONNX Runtime is a flavour chosen by an extra (pyproject.toml): the scoring path says what to install when
there is none, warns when two overwrite each other, and ``.[gpu]`` installs the GPU flavour alone.

The last test builds a fresh virtualenv with ``.[gpu]`` (about 2 GB of wheels, kept in .cache/wheels-gpu):
it runs only with LINEGUARD_GPU_INSTALL_TEST=1 (``make gpu-install-test``). No GPU is needed: onnxruntime-gpu
lists its CUDA and TensorRT providers wherever it is installed.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lineguard.benchmarks.anomalib_venv import base_python
from lineguard.engines import onnxruntime_flavour

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".cache" / "wheels-gpu"
GPU_TEST_ENV = "LINEGUARD_GPU_INSTALL_TEST"
FLAVOUR_EXTRAS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu", "openvino": "onnxruntime-openvino"}


def _name(requirement: str) -> str:
    return requirement.split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()


def test_no_flavour_is_a_hard_dependency_and_each_extra_is_one() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if _name(r).startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    for extra, flavour in FLAVOUR_EXTRAS.items():
        assert [_name(r) for r in extras[extra] if _name(r).startswith("onnxruntime")] == [flavour], extra
    # The GPU flavour is pinned with the CUDA family it was built for; TensorRT 10 (ORT 1.31 links libnvinfer.so.10).
    assert all("==" in r for r in extras["gpu"] + extras["tensorrt"])
    assert [r for r in extras["tensorrt"] if r.startswith("tensorrt-cu13-libs==10.")]
    # make venv installs the CPU flavour (and no other) with the development tools
    installed = re.search(r"install -q -e '\.\[([a-z,]+)\]'", (REPO / "Makefile").read_text())
    assert installed and {"cpu", "dev"} <= set(installed.group(1).split(","))
    assert not {"gpu", "tensorrt", "openvino"} & set(installed.group(1).split(","))


def test_without_any_flavour_the_scoring_path_says_what_to_install() -> None:
    # None in sys.modules makes `import onnxruntime` fail as it does where no flavour is installed.
    code = "import sys; sys.modules['onnxruntime'] = None; import lineguard.engines.runtime"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lineguard.engines.onnxruntime_flavour.OnnxRuntimeMissing: no ONNX Runtime is installed")
    assert "lineguard[cpu]" in last and "lineguard[gpu]" in last and "lineguard[openvino]" in last


def test_two_flavours_installed_together_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime_flavour, "installed_flavours", lambda: ["onnxruntime", "onnxruntime-openvino"])
    with pytest.warns(RuntimeWarning, match="onnxruntime and onnxruntime-openvino are installed together"):
        onnxruntime_flavour.load()


def test_tensorrt_is_loaded_from_its_wheel_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libnvinfer and libnvonnxparser from the tensorrt_libs package folder (stand-ins: copies of libz)."""
    libz = ctypes.util.find_library("z")
    found = next((p for p in (Path("/lib/x86_64-linux-gnu") / (libz or ""), Path("/usr/lib") / (libz or ""))
                  if libz and p.is_file()), None)
    if found is None:
        pytest.skip("no libz to stand in for the TensorRT libraries")
    package = tmp_path / "tensorrt_libs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    assert onnxruntime_flavour.preload_tensorrt() == []  # no tensorrt_libs on the path: nothing loaded
    for name in onnxruntime_flavour.TENSORRT_LIBRARIES:
        shutil.copy(found, package / name)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert onnxruntime_flavour.preload_tensorrt() == list(onnxruntime_flavour.TENSORRT_LIBRARIES)


# Run inside the fresh venv: what its onnxruntime is, and whether the CUDA provider's libraries resolve.
_PROBE = r"""
import importlib.metadata as m, json, sys
import lineguard.engines.runtime as runtime          # the scoring path's import: flavour check + GPU preload
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
flavours = {}
for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
    try:
        flavours[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
# No GPU here: the CUDA provider loads (its libraries resolve) and then finds no device, or it fails to load.
try:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    session_providers = session.get_providers()
except Exception as exc:
    session_providers = [f"error: {exc}"]
print(json.dumps({"flavours": flavours, "version": ort.__version__, "providers": ort.get_available_providers(),
                  "preference": runtime.available_providers(), "session_providers": session_providers}))
"""


def _mb(size: float) -> float:
    return round(size / 2**20, 1)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(GPU_TEST_ENV),
                    reason=f"downloads ~2 GB of GPU wheels: `make gpu-install-test` (or {GPU_TEST_ENV}=1)")
def test_gpu_extra_installs_the_gpu_flavour_alone(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([base_python(), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONWARNINGS": "ignore:Editable installation"}
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    # Online once: every wheel '.[gpu]' resolves to (and the build backend) into the wheelhouse; files already
    # there are not fetched again. Then offline from it, so the install is exactly what was resolved.
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    subprocess.run([*pip, "download", "-q", "-d", str(WHEELHOUSE), f"{REPO}[gpu]", "setuptools>=77", "wheel"],
                   check=True, env=env, timeout=1800)
    report = tmp_path / "install-report.json"
    had_build = (REPO / "build").exists()
    try:
        subprocess.run([*pip, "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), "--report", str(report),
                        f"{REPO}[gpu]"], check=True, env=env, timeout=1800)
    finally:
        if not had_build:  # setuptools builds the wheel in the checkout's build/: leave no stale copy there
            shutil.rmtree(REPO / "build", ignore_errors=True)
    installed = json.loads(report.read_text())["install"]
    wheels = {item["metadata"]["name"].lower().replace("_", "-"): WHEELHOUSE / item["download_info"]["url"].rsplit("/", 1)[-1]
              for item in installed if item["download_info"]["url"].startswith(WHEELHOUSE.as_uri())}
    gpu = {n: p.stat().st_size for n, p in wheels.items()
           if n.startswith(("nvidia-", "onnxruntime", "cuda-"))}
    venv_size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\ngpu-install: {len(wheels)} wheels, {_mb(sum(p.stat().st_size for p in wheels.values()))} MiB "
          f"downloaded; the GPU flavour's {len(gpu)}: {_mb(sum(gpu.values()))} MiB "
          f"({', '.join(f'{n} {_mb(s)}' for n, s in sorted(gpu.items(), key=lambda x: -x[1]))}); "
          f"venv {_mb(venv_size)} MiB on disk")

    # From tmp_path: in the checkout, `python -c` would import the source folder lineguard/, not the install.
    done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"gpu-install: {json.dumps(probe)}")
    assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} <= set(probe["providers"])
    assert probe["preference"][:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert list(probe["flavours"]) == ["onnxruntime-gpu"], "the CPU onnxruntime was installed beside the GPU one"
    # The CUDA provider's libraries (cuBLAS, cuRAND, cudart from the nvidia wheels, loaded by the flavour module)
    # resolve; what ORT could not open is only the driver's libcuda.so.1, which exists where a GPU does. (Without
    # the preload, libcublasLt.so.13 is the first it cannot open.)
    missing = set(re.findall(r"error: (\S+): cannot open shared object file", done.stderr))
    assert missing <= {"libcuda.so.1"}, done.stderr[-3000:]
    print(f"gpu-install: libraries ORT could not open: {sorted(missing) or 'none'}")
