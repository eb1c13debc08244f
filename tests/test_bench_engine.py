"""``lineguard bench engine``: the JSON other scripts read, the ceiling cut, and INT8 beside FP32.

No timing is asserted (figures come from benchmarks, not tests): these check what the benchmark
reports and that its ceiling is really a part of the engine's graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from lineguard.benchmarks.engine import ceiling_graph
from lineguard.cli import main
from lineguard.engines.training import train
from lineguard.producers.synthetic import SyntheticCamera


def _bench(model: Path, out: Path, *extra: str) -> dict:
    assert main(["bench", "engine", "--model", str(model), "--batches", "1,2", "--seconds", "0.2",
                 "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_bench_engine_reports_every_batch_beside_its_ceiling(tmp_path: Path) -> None:
    SyntheticCamera(product="washer", size=64, seed=1).write_mvtec(tmp_path / "data", 12, 1, 1)
    model = train("baseline", tmp_path / "data", tmp_path / "washer", name="washer", version="t").parent
    result = _bench(model, tmp_path / "engine.json")
    assert result["matmul_gflops_per_s"] > 0
    (one,) = result["models"]
    assert one["kind"] == "baseline" and one["onnx_file"] == "model.onnx" and one["load_s"] > 0
    for batch in ("1", "2"):
        row = one["batches"][batch]
        assert row["images_per_s"] > 0 and row["ceiling_images_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["runs"] >= 2
    assert "| 2 |" in (tmp_path / "engine.md").read_text()
    assert (tmp_path / "engine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.train
def test_patchcore_ceiling_is_its_graph_cut_at_the_search_and_int8_runs_beside_fp32(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from engine_images import weights_installed

    if not weights_installed("mobilenet_v2"):
        pytest.skip("mobilenet_v2 weights not installed (make train-deps)")
    from lineguard.engines.quantize import quantize_model

    SyntheticCamera(product="washer", size=96, seed=1).write_mvtec(tmp_path / "data", 12, 1, 1)
    model = train("patchcore", tmp_path / "data", tmp_path / "washer", name="washer", version="t",
                  input_size=96, progress=False).parent
    ceiling, cut_at = ceiling_graph(model / "model.onnx")
    assert [n.op_type for n in ceiling.graph.node].count("TopK") == 1 and len(cut_at) == 1
    full = onnx.load(str(model / "model.onnx"))
    assert len(ceiling.graph.node) < len(full.graph.node)  # the map and the re-weighting are left out

    quantize_model(model, tmp_path / "data")
    result = _bench(model, tmp_path / "engine.json", "--int8")
    fp32, int8 = result["models"]
    assert (fp32["onnx_file"], int8["onnx_file"]) == ("model.onnx", "model.int8.onnx")
    assert set(int8["speedup_vs_fp32"]) == {"1", "2"} and all(x > 0 for x in int8["speedup_vs_fp32"].values())
    assert "INT8 / FP32 images/s, same run" in (tmp_path / "engine.md").read_text()
