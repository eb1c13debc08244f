"""OpenVINO's provider: its options, the ``providers`` setting, its venv, and parity with the CPU provider.

The parity tests and ``bench engine --openvino`` need the OpenVINO venv (``onnxruntime-openvino``
installs the same ``onnxruntime`` module as the CPU wheel, so it cannot share this one); they skip, saying
how to make it, where it is missing. The same scores are compared as for the other providers: the
OpenVINO provider's within a tolerance of the CPU provider's on the same batch, and the same verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lineguard.benchmarks.openvino_venv import PROVIDER, requirements, venv_python
from lineguard.config import ProcessorConfig
from lineguard.engines.runtime import _PREFERENCE, ScoringEngine, provider_options
from lineguard.engines.training import train
from lineguard.inspection.models import ModelRegistry
from lineguard.producers.synthetic import SyntheticCamera

CPU = "CPUExecutionProvider"
NO_VENV = ("no OpenVINO venv (.cache/venv-openvino or LINEGUARD_OPENVINO_VENV): create it with "
           "`python -m lineguard.benchmarks.openvino_venv` (make openvino-deps)")


def test_openvino_scores_only_when_named() -> None:
    # Slower than ORT's CPU provider where measured (docs/benchmarks.md): installed is not enough.
    assert PROVIDER not in _PREFERENCE and _PREFERENCE[-1] == CPU


@pytest.mark.parametrize(("precision", "expected"), [("fp32", "FP32"), ("int8", "FP32"), ("fp16", "ACCURACY")])
def test_openvino_options_run_on_the_cpu_in_the_graphs_precision(precision: str, expected: str) -> None:
    options = provider_options(PROVIDER, input_name="image", height=64, width=64, max_batch=16,
                               precision=precision, threads=3)
    # FP32, never the CPU plugin's BF16 default: thresholds were calibrated on FP32 scores.
    assert {k: options[k] for k in ("device_type", "precision", "num_of_threads")} == \
        {"device_type": "CPU", "precision": expected, "num_of_threads": "3"}
    # INT8: without OpenVINO's low-precision transformations (they pad PatchCore's pooling in uint8).
    assert ("load_config" in options) == (precision == "int8")
    if precision == "int8":
        assert json.loads(options["load_config"]) == {"CPU": {"LP_TRANSFORMS_MODE": "NO"}}
    every_core = provider_options(PROVIDER, input_name="image", height=64, width=64, max_batch=16, precision="fp32")
    assert every_core["num_of_threads"] == str(os.cpu_count() or 1)


def test_the_providers_setting_reaches_every_engine(tmp_path: Path) -> None:
    assert ModelRegistry.from_config(ProcessorConfig(model_dir=tmp_path)).providers is None  # the preference
    chosen = [PROVIDER, CPU]
    assert ModelRegistry.from_config(ProcessorConfig(model_dir=tmp_path, providers=chosen)).providers == chosen


def test_the_venv_gets_no_other_onnxruntime(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1.26", "onnxruntime>=1.18", "onnx"]\n'
                         '[project.optional-dependencies]\ngpu = ["onnxruntime-gpu>=1.18"]\n')
    assert requirements(pyproject) == ["numpy>=1.26", "onnx", "onnxruntime-openvino>=1.24"]
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy"]\n[project.optional-dependencies]\n'
                         'cpu = ["onnxruntime>=1.18"]\nopenvino = ["onnxruntime-openvino==1.23.0"]\n')
    assert requirements(pyproject) == ["numpy", "onnxruntime-openvino==1.23.0"]


# Scores a .npy batch in the OpenVINO venv and writes the scores, the providers the session used and the
# threshold the engine applies (the INT8 graph's is rescaled).
_SCORE = """
import json, sys
import numpy as np
from lineguard.engines.runtime import ScoringEngine
model, onnx_file, providers, images, out = sys.argv[1:]
engine = ScoringEngine(model, onnx_file=onnx_file, providers=providers.split(","), threads=1)
scores, maps = engine.score(np.load(images))
np.save(out, scores)
json.dump({"providers": engine.providers, "threshold": engine.threshold, "map_shape": list(maps.shape)},
          open(out + ".json", "w"))
"""


def score_in_venv(python: Path, model: Path, onnx_file: str, providers: list[str], images: np.ndarray,
                  tmp: Path) -> tuple[np.ndarray, dict]:
    np.save(tmp / "images.npy", images)
    out = str(tmp / f"scores-{onnx_file}-{providers[0]}.npy")
    done = subprocess.run([str(python), "-c", _SCORE, str(model), onnx_file, ",".join(providers),
                           str(tmp / "images.npy"), out], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONNOUSERSITE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out), json.loads(Path(out + ".json").read_text())


def load_test_images(root: Path) -> np.ndarray:
    from lineguard.engines.data import list_images, load_rgb

    return np.stack([load_rgb(p) for p in list_images(root / "test")])


def assert_parity(python: Path, model: Path, onnx_file: str, images: np.ndarray, tmp: Path, rtol: float) -> None:
    """OpenVINO's scores within ``rtol`` of the CPU provider's (this venv's ORT), the same verdicts."""
    cpu = ScoringEngine(model, onnx_file=onnx_file, providers=[CPU], threads=1)
    want, _ = cpu.score(images)
    got, info = score_in_venv(python, model, onnx_file, [PROVIDER, CPU], images, tmp)
    assert info["providers"][0] == PROVIDER  # ORT falls back to the CPU provider silently: not a pass
    assert info["map_shape"] == [len(images), 1, cpu.manifest.input.height, cpu.manifest.input.width]
    np.testing.assert_allclose(got, want, rtol=rtol)
    assert info["threshold"] == pytest.approx(cpu.threshold)
    assert ((got > info["threshold"]) == (want > cpu.threshold)).all()


@pytest.fixture(scope="module")
def ov_python() -> Path:
    python = venv_python()
    if python is None:
        pytest.skip(NO_VENV)
    return python


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ov")
    SyntheticCamera(product="washer", size=64, seed=1).write_mvtec(root / "data", 12, 4, 4)
    return root / "data", train("baseline", root / "data", root / "washer", name="washer", version="t").parent


def test_openvino_scores_the_baseline_as_the_cpu_provider(ov_python: Path, baseline, tmp_path: Path) -> None:
    data, model = baseline
    assert_parity(ov_python, model, "model.onnx", load_test_images(data), tmp_path, rtol=1e-4)


@pytest.mark.train
def test_openvino_scores_patchcore_fp32_and_int8_as_the_cpu_provider(ov_python: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from engine_images import weights_installed

    if not weights_installed("mobilenet_v2"):
        pytest.skip("mobilenet_v2 weights not installed (make train-deps)")
    from lineguard.engines.quantize import quantize_model

    SyntheticCamera(product="washer", size=96, seed=1).write_mvtec(tmp_path / "data", 12, 4, 4)
    model = train("patchcore", tmp_path / "data", tmp_path / "washer", name="washer", version="t",
                  input_size=96, progress=False).parent
    images = load_test_images(tmp_path / "data")
    assert_parity(ov_python, model, "model.onnx", images, tmp_path, rtol=1e-3)
    quantize_model(model, tmp_path / "data")
    # The QDQ graph, run by OpenVINO without its low-precision transformations (which got PatchCore's
    # padded pooling wrong: 3-6x the CPU provider's scores): rounding may differ from ORT's int8 kernels.
    assert_parity(ov_python, model, "model.int8.onnx", images, tmp_path, rtol=0.02)


@pytest.mark.train
def test_openvino_scores_efficientad_fp32_and_int8_as_the_cpu_provider(ov_python: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from engine_images import weights_installed, write_mvtec

    if not weights_installed("efficientnet_lite0"):
        pytest.skip("efficientnet_lite0 weights not installed (make train-deps)")
    from lineguard.engines.quantize import quantize_model

    data = write_mvtec(tmp_path / "data", n_train=12, n_good=2, n_defect=2, size=64)
    model = train("efficientad", data, tmp_path / "ead", input_size=(64, 64), steps=3, progress=False).parent
    images = load_test_images(data)
    assert_parity(ov_python, model, "model.onnx", images, tmp_path, rtol=1e-3)
    quantize_model(model, data)
    assert_parity(ov_python, model, "model.int8.onnx", images, tmp_path, rtol=0.02)


def test_bench_engine_openvino_reports_both_providers_side_by_side(ov_python: Path, baseline, tmp_path: Path) -> None:
    from lineguard.cli import main

    _, model = baseline
    out = tmp_path / "ov.json"
    assert main(["bench", "engine", "--model", str(model), "--openvino", "--batches", "1,2", "--seconds", "0.1",
                 "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (graph,) = result["graphs"]
    assert graph["providers"]["openvino"][0] == PROVIDER and graph["providers"]["cpu"] == [CPU]
    assert graph["providers"]["openvino-cpu"] == [CPU]
    for batch in ("1", "2"):
        for leg in ("cpu", "openvino-cpu", "openvino"):
            assert graph["engine_images_per_s"][leg][batch]["best"] > 0
        assert graph["openvino_ratio"][batch]["vs_cpu"]["best"] > 0
    assert result["openvino_vs_cpu_geomean"] > 0
    assert "openvino / cpu" in (tmp_path / "ov.md").read_text()


def test_the_table_flags_a_graph_openvino_did_not_take() -> None:
    from lineguard.benchmarks.engine_providers import markdown

    row = {"1": {"best": 10.0, "median": 9.0}}
    graph = {"kind": "patchcore", "onnx_file": "model.int8.onnx", "load_s": {"cpu": 0.1, "openvino": 0.5},
             "providers": {"cpu": [CPU], "openvino-cpu": [CPU], "openvino": [CPU]},  # fell back
             "onnxruntime": {"cpu": "1.32.0", "openvino-cpu": "1.24.1", "openvino": "1.24.1"},
             "engine_images_per_s": {"cpu": row, "openvino-cpu": row, "openvino": row},
             "openvino_ratio": {"1": {"vs_cpu": {"best": 1.0, "median": 1.0},
                                      "vs_openvino-cpu": {"best": 1.0, "median": 1.0}}}}
    text = markdown({"legs": ["cpu", "openvino-cpu", "openvino"], "graphs": [graph], "trials": 5, "rounds": 1,
                     "threads": 2, "load_average_1m_before": 1.0, "load_average_1m_after": 1.0,
                     "openvino_vs_cpu_geomean": 1.0})
    assert "| patchcore | `model.int8.onnx` | 1 | 10.0 (9.0) | 10.0 (9.0) | 10.0 (9.0) | 1.00x (1.00x) |" in text
    assert "**OpenVINO did not take** patchcore model.int8.onnx" in text
