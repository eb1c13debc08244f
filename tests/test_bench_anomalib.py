"""``lineguard bench anomalib``: the measuring helpers, the report, and (opt-in) one real comparison run.

The end-to-end test sets up anomalib's virtualenv (a few GB from PyPI the first time) and fits two
PatchCores, so it runs only with LINEGUARD_BENCH_ANOMALIB=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lineguard.benchmarks import anomalib_compare as ac
from lineguard.benchmarks.anomalib_report import markdown, write_outputs
from lineguard.benchmarks.anomalib_scoring import side_metrics
from lineguard.benchmarks.anomalib_venv import ANOMALIB_REQUIREMENTS, STAMP, ensure_venv
from lineguard.benchmarks.measure import run_measured
from lineguard.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LINEGUARD_BENCH_ANOMALIB_DATA") or REPO_ROOT.parent / "shared" / "data" / "hazelnut_toy")


def _side(auroc: float, b1: float, b16: float) -> dict:
    speeds = {"1": {"best": b1, "median": b1}, "16": {"best": b16, "median": b16}}
    config = {"layers": ["features.6", "features.13"], "input_size": [256, 256], "coreset_ratio": 0.1,
              "runtime": "x", "memory_bank_size": 100, "n_fit_images": 10, "versions": {"anomalib": "2.7.0"}}
    return {"image_auroc": auroc, "pixel_auroc": auroc, "pro": 0.5, "images_per_s_b1": b1,
            "images_per_s_b16": b16, "throughput": speeds, "throughput_with_preprocessing": speeds,
            "cpu_ms_per_image_b16": 50.0, "fit_s": 2.0, "peak_rss_mb": 500.0, "fit_peak_rss_mb": 500.0,
            "score_peak_rss_mb": 300.0, "config": config}


def test_markdown_reports_ratios_and_the_verdict() -> None:
    result = {"data": "d", "lineguard": _side(0.95, 20.0, 30.0), "anomalib": _side(0.94, 5.0, 10.0),
              "throughput_ratio_b16": 3.0, "image_auroc_delta": 0.01, "pixel_auroc_delta": 0.01,
              "acceptance": {"passed": True}, "load_average_1m_before": 1.0, "load_average_1m_after": 1.0,
              "cpu_count": 2}
    table = markdown(result)
    assert "| images/s, batch 16 (best) | 30.0 | 10.0 | 3.00x |" in table
    assert "| image AUROC | 0.9500 | 0.9400 | +0.0100 |" in table
    assert "**met**" in table


def test_run_measured_reports_the_childs_own_peak_rss(tmp_path: Path) -> None:
    # The child holds ~200 MB; the parent's own RSS must not leak into the figure.
    code = "import numpy as np; a = np.ones(200 * 2**20 // 8); print(a.sum())"
    measured = run_measured([sys.executable, "-c", code], tmp_path / "log")
    assert measured.returncode == 0
    assert 200 <= measured.peak_rss_mb < 1000
    assert measured.cpu_s > 0


def test_run_measured_ignores_a_large_parent(tmp_path: Path) -> None:
    # CI caught this: started from a 1.7 GB pytest, a 200 MB child reported 1.7 GB (the kernel counts the
    # memory a child had before exec, and subprocess starts it inside the parent's). Here the parent holds 1 GB.
    parent = (
        "import sys, numpy as np; from pathlib import Path\n"
        "held = np.ones(1024 * 2**20 // 8)\n"
        "from lineguard.benchmarks.measure import run_measured\n"
        "child = 'import numpy as np; a = np.ones(200 * 2**20 // 8); print(a.sum())'\n"
        "m = run_measured([sys.executable, '-c', child], Path(sys.argv[1]))\n"
        "print(m.peak_rss_mb, held.sum() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent, str(tmp_path / "log")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert 200 <= float(out[0]) < 600 and out[1] == "True"


def test_run_measured_kills_a_child_over_the_rss_cap(tmp_path: Path) -> None:
    code = "import numpy as np, time; a = np.ones(600 * 2**20 // 8); time.sleep(60)"
    with pytest.raises(RuntimeError, match="over the 300 MB cap"):
        run_measured([sys.executable, "-c", code], tmp_path / "log", max_rss_mb=300)


def test_run_measured_raises_with_the_log_tail(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        run_measured([sys.executable, "-c", "raise SystemExit('boom')"], tmp_path / "log")


def test_ensure_venv_is_a_no_op_once_stamped(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")  # never run: the stamp short-circuits
    (venv / STAMP).write_text("\n".join(ANOMALIB_REQUIREMENTS))
    assert ensure_venv(venv) == venv / "bin" / "python"


def test_cli_registers_bench_anomalib() -> None:
    args = build_parser().parse_args(["bench", "anomalib", "--data", "x", "--out", "out.json"])
    assert args.bench_kind == "anomalib" and args.coreset_ratio == 0.1 and args.size == 256
    assert args.layers == "features.6,features.13" and args.out == "out.json"


def test_side_metrics_use_lineguards_metric_code(tmp_path: Path) -> None:
    from lineguard.engines.data import load_mask, test_samples
    from lineguard.producers.synthetic import SyntheticCamera

    data = tmp_path / "washer"  # a small MVTec-layout set with masks, made here (no ../shared)
    SyntheticCamera(size=64, seed=3).write_mvtec(data, n_train=2, n_test_good=3, n_test_defect=5)
    samples = test_samples(data)
    # Scores equal to the labels and maps equal to the masks: every AUROC is exactly 1.
    scores = np.array([float(s.is_defective) for s in samples])
    maps = np.stack([load_mask(s.mask_path, (64, 64)).astype(np.float32) for s in samples])
    metrics = side_metrics(scores, maps, data, (64, 64))
    assert metrics["image_auroc"] == 1.0 and metrics["pixel_auroc"] == 1.0
    with pytest.raises(ValueError):
        side_metrics(scores[:-1], maps, data, (64, 64))


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.skipif(os.environ.get("LINEGUARD_BENCH_ANOMALIB") != "1",
                    reason="set LINEGUARD_BENCH_ANOMALIB=1 (installs anomalib in .cache/anomalib-venv)")
@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} missing")
def test_bench_anomalib_end_to_end(tmp_path: Path) -> None:
    cfg = ac.CompareConfig(data=DATA, trials=2, seconds_per_trial=0.5, onnx=False, work_dir=tmp_path / "work")
    result = ac.run(cfg)
    write_outputs(result, tmp_path / "bench.json")
    assert (tmp_path / "bench.md").exists()
    for side in ("lineguard", "anomalib"):
        figures = result[side]
        assert 0.5 <= figures["image_auroc"] <= 1.0 and 0.5 <= figures["pixel_auroc"] <= 1.0
        assert figures["images_per_s_b16"] > 0 and figures["fit_s"] > 0 and figures["peak_rss_mb"] > 0
        assert figures["config"]["coreset_ratio"] == 0.1
    assert result["throughput_ratio_b16"] > 0
