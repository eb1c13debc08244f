"""``lineguard demo``: its figures against the camera's ground truth, and its machine-readable last line.

The figures are checked on hand-made frames and verdicts; the whole demo (PatchCore fitted, two
lines streamed through its own Kafka broker) runs in the slow test, as ``make demo`` runs it.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lineguard.components import component_env
from lineguard.demo import LineFigures, score_run, summary_line
from lineguard.schemas import Frame, Verdict, new_frame_id

SUMMARY = re.compile(r"^demo: frames=(\d+) verdicts=(\d+) deadletter=(\d+) heatmaps=(\d+) "
                     r"caught=(\d+)/(\d+) false_alarms=(\d+)/(\d+)$")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _frame(line: str, defective: bool | None) -> Frame:
    meta = {} if defective is None else {"gt_defective": defective, "defect": "dent" if defective else "good"}
    return Frame(frame_id=new_frame_id(), line_id=line, camera_id=f"{line}-cam1", product="washer",
                 captured_at_ns=1_000_000_000, seq=0, encoding="jpeg", image=b"\xff\xd8", meta=meta)


def _verdict(frame: Frame, flagged: bool, latency_ms: float) -> Verdict:
    return Verdict(frame_id=frame.frame_id, line_id=frame.line_id, camera_id=frame.camera_id, product="washer",
                   seq=0, captured_at_ns=frame.captured_at_ns,
                   scored_at_ns=frame.captured_at_ns + int(latency_ms * 1e6), model_name="washer",
                   model_version="v1", score=2.0 if flagged else 1.0, threshold=1.5, is_defective=flagged,
                   heatmap_key=None, queue_wait_ms=0.0, inference_ms=1.0, processor_id="p")


def test_figures_count_caught_defects_and_false_alarms_per_line() -> None:
    a_bad = [_frame("line1", True) for _ in range(4)]
    a_good = [_frame("line1", False) for _ in range(6)]
    b_good = [_frame("line2", False) for _ in range(3)]
    no_truth = _frame("line1", None)  # e.g. the demo's broken frames, or another source's
    verdicts = ([_verdict(f, flagged=i < 3, latency_ms=100 + i) for i, f in enumerate(a_bad)]
                + [_verdict(f, flagged=i == 0, latency_ms=50) for i, f in enumerate(a_good)]
                + [_verdict(f, flagged=False, latency_ms=20) for f in b_good]
                + [_verdict(no_truth, flagged=True, latency_ms=9999)])
    # A replay (at-least-once) scored later with another outcome: the first verdict counts, once.
    replay = _verdict(a_bad[3], flagged=True, latency_ms=5000)
    figures = score_run(a_bad + a_good + b_good + [no_truth], verdicts + [replay])

    assert list(figures) == ["line1", "line2"]
    one, two = figures["line1"], figures["line2"]
    assert (one.frames, one.defective, one.caught, one.good, one.false_alarms) == (10, 4, 3, 6, 1)
    assert (two.frames, two.defective, two.caught, two.good, two.false_alarms) == (3, 0, 0, 3, 0)
    assert max(one.capture_to_verdict_ms) == pytest.approx(103) and 50 < one.p99_ms < 103
    assert two.p99_ms == pytest.approx(20)
    assert math.isnan(LineFigures("idle").p99_ms)


def test_a_frame_without_a_verdict_is_not_counted() -> None:
    frames = [_frame("line1", True), _frame("line1", False)]
    figures = score_run(frames, [_verdict(frames[1], flagged=False, latency_ms=10)])
    assert (figures["line1"].frames, figures["line1"].defective) == (1, 0)


def test_summary_line_totals_the_lines_and_parses() -> None:
    figures = {"line1": LineFigures("line1", frames=150, defective=20, caught=19, false_alarms=2),
               "line2": LineFigures("line2", frames=150, defective=25, caught=25, false_alarms=0)}
    line = summary_line(figures, frames=302, verdicts=300, deadletter=2, heatmaps=46)
    assert SUMMARY.match(line).groups() == ("302", "300", "2", "46", "44", "45", "2", "255")


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.timeout(600)
def test_make_demo_fits_patchcore_and_reports_caught_and_false_alarms(tmp_path: Path) -> None:
    """The demo as ``make demo`` runs it, in a state dir of its own (so its own Kafka broker, stopped
    at the end), fewer frames. It must exit 0 and its figures must add up."""
    pytest.importorskip("torch")
    frames_per_line = 40
    cache = os.environ.get("LINEGUARD_STACK__CACHE_DIR", str(REPO_ROOT / ".cache"))  # the fetched Kafka jars
    env = component_env(state_dir=tmp_path / "state", LINEGUARD_STACK__CACHE_DIR=cache)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "lineguard.cli", "demo", "--frames", str(frames_per_line)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=580)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    last = run.stdout.strip().splitlines()[-1]
    print(f"{last} wall_s={time.monotonic() - started:.0f}")
    frames, verdicts, dead, heatmaps, caught, defective, false_alarms, good = map(int, SUMMARY.match(last).groups())
    assert (frames, verdicts, dead) == (2 * frames_per_line + 2, 2 * frames_per_line, 2)
    assert defective + good == verdicts and 0 < defective < verdicts
    assert heatmaps == caught + false_alarms  # an overlay for each flagged part, none for the others
    assert "patchcore on" in output and "lineguard serve --model-dir" in output
    # PatchCore separates the synthetic defects from good parts (image AUROC 1.0 on them): most are
    # caught, few good parts flagged. Loose bounds, so a real regression fails and noise does not.
    assert caught >= 0.8 * defective, last
    assert false_alarms <= 0.1 * good, last
