"""``lineguard bench fit``: one train process per training-set size, measured from outside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

from lineguard.benchmarks.fit_scaling import default_sizes  # noqa: E402
from lineguard.cli import main  # noqa: E402
from lineguard.producers.synthetic import SyntheticCamera  # noqa: E402


def test_default_sizes_end_at_the_whole_set() -> None:
    assert default_sizes(666) == (83, 166, 333, 666)
    assert default_sizes(10) == (8, 10)


def test_bench_fit_measures_each_size(tmp_path: Path, capsys) -> None:
    SyntheticCamera(product="washer", size=96, seed=1).write_mvtec(tmp_path / "data", 24, 1, 1)
    out = tmp_path / "fit.json"
    assert main(["bench", "fit", "--data", str(tmp_path / "data"), "--sizes", "8,24",
                 "--option", "input_size=96", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["sizes"]
    assert [r["images"] for r in rows] == [8, 24]
    small, large = rows
    # A 1% coreset of 3x the patches: the bank and the patch count grow with the training set.
    assert large["n_patches"] > 2 * small["n_patches"] and large["memory_bank_size"] > small["memory_bank_size"]
    assert all(100 < r["peak_rss_mb"] < 4000 and r["wall_s"] > 0 for r in rows)
    assert "| 24 |" in out.with_suffix(".md").read_text() and "memory bank" in capsys.readouterr().out
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
