"""``lineguard bench gpu`` (benchmarks/gpu_check.py): where there is no GPU it says why and measures nothing;
with the CPU provider standing in for CUDA and TensorRT its parity, timing and report run end to end.

The real check needs an NVIDIA GPU (benchmarks/gpu_check.sh); no figure is asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lineguard.benchmarks import gpu_check
from lineguard.cli import main
from lineguard.engines.manifest import FP16_FILE, ONNX_FILE
from lineguard.engines.training import train
from lineguard.producers.synthetic import SyntheticCamera

REPO = Path(__file__).resolve().parents[1]
GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_without_a_gpu_bench_gpu_says_why_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine's onnxruntime is the cpu flavour: the check stops before fitting or timing anything.
    monkeypatch.setattr(gpu_check, "prepare_models", lambda *a, **k: pytest.fail("went on without a GPU"))
    assert main(["bench", "gpu", "--out", str(tmp_path / "gpu.json")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("lineguard bench gpu: no GPU to check: this ONNX Runtime (onnxruntime ")
    assert "has no CUDA provider" in err and "lineguard[gpu,tensorrt]" in err
    assert not list(tmp_path.iterdir())


def test_the_shell_wrapper_passes_the_reason_and_the_exit_status_on(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 3, done.stderr
    assert "no GPU to check" in done.stderr and not (tmp_path / "out").exists()


def test_gpu_problem_names_what_is_missing() -> None:
    assert "no CUDA provider" in gpu_check.gpu_problem(["CPUExecutionProvider"], gpus=lambda: ["0, H200"])
    assert "no NVIDIA GPU is visible" in gpu_check.gpu_problem(GPU_PROVIDERS, gpus=lambda: [])
    one_gpu = ["0, NVIDIA H200, 580.65.06, 143771 MiB"]
    # No TensorRT 10 on this machine: named, with the way round it.
    assert "libnvinfer.so.10" in gpu_check.gpu_problem(GPU_PROVIDERS, gpus=lambda: one_gpu)
    assert "no TensorRT provider" in gpu_check.gpu_problem(GPU_PROVIDERS[1:], gpus=lambda: one_gpu)
    assert gpu_check.gpu_problem(GPU_PROVIDERS[1:], gpus=lambda: one_gpu, need_tensorrt=False) is None


def test_the_check_runs_end_to_end_with_the_cpu_standing_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cpu = ["CPUExecutionProvider"]
    monkeypatch.setattr(gpu_check, "LEGS", {"cpu-fp32": (cpu, ONNX_FILE), "cuda-fp32": (cpu, ONNX_FILE),
                                            "tensorrt-fp16": (cpu, FP16_FILE)})
    monkeypatch.setattr(gpu_check, "gpu_problem", lambda providers, need_tensorrt=True: None)
    data = tmp_path / "data"
    SyntheticCamera(product="washer", size=64, seed=1).write_mvtec(data, 12, 3, 3)
    model = train("baseline", data, tmp_path / "washer", name="washer", version="t").parent
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--model", str(model), "--data", str(data), "--batches", "1,4", "--trials", "1",
                 "--seconds-per-trial", "0.05", "--out", str(out)]) == 0
    assert not (model / FP16_FILE).exists()  # the FP16 graph went into the work copy, not the given folder
    result = json.loads(out.read_text())
    (entry,) = result["models"]
    assert entry["kind"] == "baseline" and entry["passed"] and result["passed"]
    assert set(entry["legs"]) == {"cpu-fp32", "cuda-fp32", "tensorrt-fp16"}
    assert entry["legs"]["tensorrt-fp16"]["onnx_file"] == FP16_FILE
    for leg, load in entry["legs"].items():
        assert load["build_s"] >= 0 and load["cached_load_s"] >= 0
        assert set(load["images_per_s"]) == ({"16"} if leg == "cpu-fp32" else {"1", "4"})
    # Same graph on the same provider: identical; the FP16 graph within its tolerance, same verdicts.
    assert entry["parity"]["cuda-fp32"] == {"score_rel_diff_max": 0.0, "map_rel_diff_max": 0.0,
                                            "verdict_mismatches": 0, "ok": True}
    assert entry["parity"]["tensorrt-fp16"]["verdict_mismatches"] == 0 and entry["parity"]["n_images"] == 4
    table = (tmp_path / "gpu.md").read_text()
    assert "| tensorrt-fp16 | CPUExecutionProvider |" in table and "Parity: passed" in table
    assert "Parity: passed" in capsys.readouterr().out
