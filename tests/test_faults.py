"""Fault injection on the real local stack: every frame is counted after the fault.

Each test runs real ``lineguard`` processes (processors, producers, sinks) on
lines of its own and injects one fault for real: SIGKILL of a processor
worker, a broker stop and start, the S3 server stopped, the ClickHouse HTTP
endpoint stopped, a producer faster than the processor. Afterwards it counts
frames, verdicts, ClickHouse rows (FINAL) and dead letters and prints one line
to quote, e.g.::

    fault=processor_crash sent=300 verdicts=331 rows=300 deadletter=0 lost=0 duplicate_rows=0 ...

Each test is bounded (pytest-timeout) and the scenario is sized to finish in
about a minute on two shared cores.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from lineguard.engines.training import train
from lineguard.producers.synthetic import SyntheticCamera

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import FaultPipeline, free_port, try_scrape_sum  # noqa: E402
from pipeline_helpers import wait_for  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline model for the synthetic washer, fitted once for the module."""
    root = tmp_path_factory.mktemp("fault-models")
    data = root / "data"
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(data, n_train=30, n_test_good=2, n_test_defect=2)
    train("baseline", data, root / "models" / "washer", name="washer", version="faults")
    return root / "models"


def _up(port: int) -> bool:
    return try_scrape_sum(port, "lineguard_processor_frames_in_total") is not None


@pytest.mark.timeout(240)
def test_processor_crash_sigkill_one_of_two_workers(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Two workers in one group, two lines streaming; one worker is SIGKILLed mid-stream.

    Its partitions move to the survivor after the session timeout, which re-reads
    from the last committed offset: some verdicts repeat (at-least-once), none is
    missing, and ClickHouse still holds exactly one row per frame.
    """
    per_line, fps = 150, 15
    p = FaultPipeline(stack, tmp_path, models, "crash")
    ports = [free_port(), free_port()]
    workers = [p.processor(f"processor-{i}", metrics_port=port) for i, port in enumerate(ports)]
    sink = p.sink("clickhouse")
    try:
        wait_for(lambda: all(_up(port) for port in ports), 120, "both workers' metrics endpoints")
        producers = p.producers(count=per_line, fps=fps)
        # Mid-stream: both workers have scored frames and about a third of the frames have verdicts.
        wait_for(lambda: p.count(p.verdict_topics()) >= (2 * per_line) // 3
                 and all((try_scrape_sum(port, "lineguard_processor_verdicts_out_total") or 0) > 0 for port in ports),
                 120, "both workers scoring")
        victim = workers[1]
        victim.stop(signal.SIGKILL)
        killed_at = p.count(p.verdict_topics())
        assert victim.proc.returncode == -signal.SIGKILL
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 150, "the survivor to score every frame")
        assert workers[0].alive(), workers[0].tail(40)
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 60)
    finally:
        p.stop_all()
    tally = p.tally("processor_crash", sent, verdicts_when_killed=killed_at)
    print(tally.line())
    assert tally.in_topics == sent == 2 * per_line
    assert tally.deadletter == 0
    assert tally.verdict_frames == sent and tally.lost == 0
    assert tally.rows == sent and tally.duplicate_rows == 0


@pytest.mark.timeout(300)
def test_broker_restart_mid_stream(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The broker is stopped and started again while two lines stream; nobody is restarted by hand.

    Producers buffer and retry (idempotent, so no duplicate frames), the faust
    processor reconnects and rejoins its group, both sinks reconnect; afterwards
    every frame has a verdict and exactly one ClickHouse row, and every heatmap
    is stored.
    """
    per_line, fps = 150, 15
    p = FaultPipeline(stack, tmp_path, models, "broker", LINEGUARD_PROCESSOR__HEATMAPS="all")
    port = free_port()
    worker = p.processor(metrics_port=port)
    sinks = [p.sink("clickhouse"), p.sink("heatmaps")]
    try:
        wait_for(lambda: _up(port), 120, "the processor's metrics endpoint")
        producers = p.producers(count=per_line, fps=fps)
        wait_for(lambda: p.count(p.verdict_topics()) >= (2 * per_line) // 4, 120, "a quarter of the verdicts")
        before = p.count(p.verdict_topics())
        started = time.monotonic()
        stack.restart_kafka()
        down_s = time.monotonic() - started
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 180, "every frame scored after the restart")
        for kind, topic_names in (("clickhouse", p.verdict_topics()), ("heatmaps", p.heatmap_topics())):
            p.wait_sink_caught_up(p.sink_group(kind), topic_names, 90)
        assert worker.alive() and all(s.alive() for s in sinks), p.logs()
        reconnects = try_scrape_sum(port, "lineguard_processor_publish_retries_total")
    finally:
        p.stop_all()
    heatmap_keys = {f"{h}" for h in _heatmap_keys(p)}
    stored = {str(path.relative_to(p.state / "heatmaps")) for path in (p.state / "heatmaps").rglob("*.png")}
    tally = p.tally("broker_restart", sent, verdicts_before_restart=before, broker_down_s=int(down_s),
                    heatmaps=len(heatmap_keys), heatmaps_stored=len(stored & heatmap_keys),
                    publish_retries=int(reconnects or 0))
    print(tally.line())
    assert tally.in_topics == sent == 2 * per_line  # idempotent producers: no frame twice
    assert tally.deadletter == 0
    assert tally.verdict_frames == sent and tally.lost == 0
    assert tally.rows == sent and tally.duplicate_rows == 0
    assert len(heatmap_keys) == sent and heatmap_keys <= stored


def _heatmap_keys(p: FaultPipeline) -> set[str]:
    from lineguard.schemas import Heatmap

    from pipeline_helpers import read_topics

    expect = p.count(p.heatmap_topics())
    return {h.key for h in read_topics(p.kafka, p.heatmap_topics(), Heatmap.decode, expect=expect,
                                       timeout_s=60, settle_s=1)}
