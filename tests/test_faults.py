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
import uuid
from collections import Counter
from pathlib import Path

import pytest

from lineguard.producers.synthetic import SyntheticCamera

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import (ChdbHttpServer, FaultPipeline, assigned_partitions, committed, fit_fault_models,  # noqa: E402
                           free_port, log_text, try_scrape_sum)
from pipeline_helpers import wait_for  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline model for the synthetic washer, fitted once for the module."""
    return fit_fault_models(tmp_path_factory.mktemp("fault-models"))


def _up(port: int) -> bool:
    return try_scrape_sum(port, "lineguard_processor_frames_in_total") is not None


@pytest.mark.timeout(240)
def test_processor_crash_sigkill_one_of_two_workers(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Two workers in one group, two lines streaming; one worker is SIGKILLed mid-stream.

    Its partitions move to the survivor after the session timeout, which re-reads
    from the last committed offset: some verdicts repeat (at-least-once), none is
    missing, and ClickHouse still holds exactly one row per frame.
    """
    per_camera, fps = 75, 8
    p = FaultPipeline(stack, tmp_path, models, "crash")
    ports = [free_port(), free_port()]
    workers = [p.processor(f"processor-{i}", metrics_port=port) for i, port in enumerate(ports)]
    p.sink("clickhouse")
    try:
        total = 2 * p.kafka.frame_partitions

        def balanced() -> bool:
            held = [assigned_partitions(port) for port in ports]
            return all(held) and not (held[0] & held[1]) and len(held[0] | held[1]) == total

        wait_for(balanced, 120, "both workers in the group, each holding frame partitions")
        producers = p.producers(count=per_camera, fps=fps, cameras_per_line=2)
        # Mid-stream: both workers have scored frames and about a third of the frames have verdicts.
        wait_for(lambda: p.count(p.verdict_topics()) >= (4 * per_camera) // 3
                 and all((try_scrape_sum(port, "lineguard_processor_verdicts_out_total") or 0) > 0 for port in ports),
                 120, "both workers scoring")  # noqa: E501
        victim = workers[1]
        # Kill it while it holds frames it has not acknowledged (read, batching or scoring).
        in_flight = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and in_flight <= 0:
            in_flight = int(try_scrape_sum(ports[1], "lineguard_processor_pending_frames") or 0)
        victim.stop(signal.SIGKILL)
        killed_at = p.count(p.verdict_topics())
        assert victim.proc.returncode == -signal.SIGKILL
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 150, "the survivor to score every frame")
        assert workers[0].alive(), workers[0].tail(40)
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 60)
    finally:
        p.stop_all()
    tally = p.tally("processor_crash", sent, verdicts_when_killed=killed_at, victim_in_flight_at_kill=in_flight)
    print(tally.line())
    assert tally.in_topics == sent == 4 * per_camera
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


def _outage_checks(p: FaultPipeline, kind: str, sink_port: int, topic_names: list[str], hold_s: float) -> dict[str, int]:
    """While the store is down: the sink retries, reports lag, commits nothing; verdicts keep flowing.

    Returns the figures observed during the outage (for the printed line)."""
    group = p.sink_group(kind)
    wait_for(lambda: (try_scrape_sum(sink_port, "lineguard_sink_retries_total", kind=kind) or 0) > 0, 60,
             f"the {kind} sink to fail and retry")
    frozen = committed(p.kafka, group, topic_names)
    verdicts_at_start = p.count(p.verdict_topics())
    time.sleep(hold_s)
    wait_for(lambda: (try_scrape_sum(sink_port, "lineguard_sink_consumer_lag", kind=kind) or 0) > 0, 30,
             f"the {kind} sink to report its lag")
    samples = {
        "retries": try_scrape_sum(sink_port, "lineguard_sink_retries_total", kind=kind),
        "lag": try_scrape_sum(sink_port, "lineguard_sink_consumer_lag", kind=kind),
        "retrying": try_scrape_sum(sink_port, "lineguard_sink_retrying", kind=kind),
    }
    assert committed(p.kafka, group, topic_names) == frozen, "offsets were committed while the store was down"
    verdicts_during = p.count(p.verdict_topics()) - verdicts_at_start
    assert verdicts_during > 0, "verdicts stopped flowing to the MES topics during the sink outage"
    assert samples["retrying"] == 1
    return {"outage_retries": int(samples["retries"] or 0), "outage_lag": int(samples["lag"] or 0),
            "verdicts_during_outage": verdicts_during}


@pytest.mark.timeout(300)
def test_s3_outage_heatmap_sink_retries_and_catches_up(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The S3 server is stopped for a while: the heatmap sink retries with bounded backoff,
    commits nothing it has not stored, reports its lag, and catches up once S3 is back;
    verdicts (and the ClickHouse sink) keep flowing meanwhile."""
    per_line, fps = 240, 12
    p = FaultPipeline(stack, tmp_path, models, "s3out", LINEGUARD_PROCESSOR__HEATMAPS="all")
    bucket = f"heatmaps-{p.group[-6:]}"
    s3_env = {
        "LINEGUARD_SINKS__OBJECT_STORE__BACKEND": "s3",
        "LINEGUARD_SINKS__OBJECT_STORE__ENDPOINT": stack.s3_endpoint,
        "LINEGUARD_SINKS__OBJECT_STORE__ACCESS_KEY": stack.s3_access_key,
        "LINEGUARD_SINKS__OBJECT_STORE__SECRET_KEY": stack.s3_secret_key,
        "LINEGUARD_SINKS__OBJECT_STORE__BUCKET": bucket,
    }
    port, sink_port = free_port(), free_port()
    p.processor(metrics_port=port)
    heatmap_sink = p.sink("heatmaps", metrics_port=sink_port, **s3_env)
    p.sink("clickhouse")
    s3_stopped = False
    try:
        wait_for(lambda: _up(port) and try_scrape_sum(sink_port, "lineguard_sink_items_written_total") is not None,
                 120, "processor and sink metrics endpoints")
        producers = p.producers(count=per_line, fps=fps)
        wait_for(lambda: (try_scrape_sum(sink_port, "lineguard_sink_items_written_total") or 0) > 0, 120,
                 "the first heatmaps in S3")
        stack.local.stop_s3()
        s3_stopped = True
        during = _outage_checks(p, "heatmaps", sink_port, p.heatmap_topics(), hold_s=4)
        stack.local.start_s3()
        s3_stopped = False
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 150)
        p.wait_sink_caught_up(p.sink_group("heatmaps"), p.heatmap_topics(), 120)
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 60)
        assert heatmap_sink.alive(), heatmap_sink.tail(40)
        written = int(try_scrape_sum(sink_port, "lineguard_sink_items_written_total") or 0)
    finally:
        if s3_stopped:
            stack.local.start_s3()
        p.stop_all()
    assert "store failing for" in log_text(heatmap_sink)  # the lag is logged during the outage, too
    keys = _heatmap_keys(p)
    from minio import Minio

    client = Minio(stack.s3_endpoint, access_key=stack.s3_access_key, secret_key=stack.s3_secret_key, secure=False)
    stored = {obj.object_name for obj in client.list_objects(bucket, recursive=True)}
    tally = p.tally("s3_outage", sent, heatmaps=len(keys), heatmaps_stored=len(keys & stored),
                    heatmaps_written=written, **during)
    print(tally.line())
    assert tally.verdict_frames == sent == tally.in_topics and tally.lost == 0 and tally.deadletter == 0
    assert tally.rows == sent and tally.duplicate_rows == 0
    assert len(keys) == sent and keys <= stored


@pytest.mark.timeout(300)
def test_clickhouse_outage_sink_retries_and_catches_up(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """ClickHouse (the clickhouse-connect backend against the chdb HTTP fixture) is killed for a
    while: the sink retries, commits nothing unwritten, reports lag, and catches up after the
    restart with exactly one row per frame; verdicts keep flowing to the MES topics meanwhile."""
    from lineguard.stores import ServerStore

    per_line, fps = 240, 12
    server = ChdbHttpServer(tmp_path / "clickhouse", tmp_path / "chdb-http.log")
    server.start()
    database = f"lg_{uuid.uuid4().hex[:8]}"
    p = FaultPipeline(stack, tmp_path, models, "chout")
    ch_env = {
        "LINEGUARD_SINKS__CLICKHOUSE__BACKEND": "server",
        "LINEGUARD_SINKS__CLICKHOUSE__URL": server.url,
        "LINEGUARD_SINKS__CLICKHOUSE__DATABASE": database,
    }
    port, sink_port = free_port(), free_port()
    p.processor(metrics_port=port)
    sink = p.sink("clickhouse", metrics_port=sink_port, **ch_env)
    try:
        wait_for(lambda: _up(port) and try_scrape_sum(sink_port, "lineguard_sink_items_written_total") is not None,
                 120, "processor and sink metrics endpoints")
        producers = p.producers(count=per_line, fps=fps)
        wait_for(lambda: (try_scrape_sum(sink_port, "lineguard_sink_items_written_total") or 0) > 0, 120,
                 "the first rows in ClickHouse")
        server.stop(signal.SIGKILL)
        during = _outage_checks(p, "clickhouse", sink_port, p.verdict_topics(), hold_s=4)
        server.start()
        sent = p.wait_producers(producers)
        p.wait_all_scored(sent, 150)
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 120)
        assert sink.alive(), sink.tail(40)
        p.stop_all()
        store = ServerStore(server.url, database=database)
        try:
            tally = p.tally("clickhouse_outage", sent, store=store, **during)
        finally:
            store.close()
    finally:
        p.stop_all()
        server.stop()
    print(tally.line())
    assert "store failing for" in log_text(sink)
    assert tally.verdict_frames == sent == tally.in_topics and tally.lost == 0 and tally.deadletter == 0
    assert tally.rows == sent and tally.duplicate_rows == 0


@pytest.mark.timeout(300)
def test_back_pressure_memory_stays_bounded_and_lag_drains(stack, models: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Producers outrun the processor for a sustained period: the processor's memory stays
    bounded (bounded micro-batcher + faust's stream buffer pause fetching), its consumer lag
    grows and is reported on /metrics, and it drains afterwards with every frame scored.

    The frames are noisy 1024x1024 JPEGs (about 780 kB): sending one costs the producer a copy,
    decoding one costs the processor tens of milliseconds; the producer sends three times as
    fast as the processor scores (at least 80 a second), so it outruns it on any machine. The backlog is grown until it holds far more than the processor
    may hold, so an unbounded processor would fail the memory bound."""
    import threading

    from lineguard.kafka import producer_client
    from lineguard.schemas import Frame, new_frame_id, topics
    from lineguard.schemas import image as imagecodec

    from fault_helpers import rss_kib

    import numpy as np

    side, min_rate, min_burst_s, max_burst_s, target_backlog, max_frames = 1024, 80, 9.0, 40.0, 500, 2000
    max_batch = 4
    p = FaultPipeline(stack, tmp_path, models, "backpr", LINEGUARD_PROCESSOR__HEATMAPS="none",
                      LINEGUARD_PROCESSOR__BATCHING__MAX_BATCH=str(max_batch),
                      LINEGUARD_KAFKA__MESSAGE_MAX_BYTES=str(2 * 2**20))
    port = free_port()
    worker = p.processor(metrics_port=port)
    camera = SyntheticCamera(product="washer", size=side, seed=3, defect_rate=0.2)
    noise = np.random.default_rng(0)
    images = [imagecodec.encode((camera.render(i).image.astype(np.int16) + noise.integers(-40, 40, (side, side, 3)))
                                .clip(0, 255).astype(np.uint8), "jpeg", quality=95)[0] for i in range(4)]
    frame_bytes = sum(len(i) for i in images) // len(images)
    samples: list[tuple[float, int, float]] = []  # (t, rss KiB, reported lag)
    scored = [0.0]  # verdicts the processor has published, from its /metrics
    stop = threading.Event()

    def sample() -> None:
        from fault_helpers import metric_sum, scrape

        while not stop.is_set():
            try:
                metrics = scrape(port, timeout_s=2)
                samples.append((time.monotonic(), rss_kib(worker.pid),
                                metric_sum(metrics, "lineguard_processor_consumer_lag")))
                scored[0] = metric_sum(metrics, "lineguard_processor_verdicts_out_total")
            except (OSError, ValueError):
                pass
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_for(lambda: _up(port), 120, "the processor's metrics endpoint")
        producer = producer_client(p.kafka, **{"linger.ms": 5, "compression.type": "none"})
        sent_ids: set[str] = set()
        # Warm up (model loaded, buffers and thread pools in use) before the memory baseline.
        for n in range(8):
            frame = Frame(frame_id=new_frame_id(), line_id=p.lines[n % 2], camera_id=f"cam-{n % 4}",
                          product="washer", captured_at_ns=time.time_ns(), seq=0, encoding="jpeg", image=images[n % 4])
            producer.produce(topics.frames(frame.line_id), key=frame.camera_id.encode(), value=frame.encode())
            sent_ids.add(frame.frame_id)
        assert producer.flush(30) == 0
        sampler.start()
        wait_for(lambda: scored[0] >= 8, 60, "the warm-up frames scored")
        time.sleep(1.5)
        baseline_kib = max(rss for _, rss, _ in samples[-4:])
        started = time.monotonic()
        # Three times the processor's rate, for at least min_burst_s and until target_backlog frames wait.
        scored_before = scored[0]
        while (elapsed := time.monotonic() - started) < max_burst_s and len(sent_ids) < max_frames:
            if elapsed >= min_burst_s and len(sent_ids) - scored[0] >= target_backlog:
                break
            rate = max(min_rate, 3 * (scored[0] - scored_before) / max(elapsed, 1.0))
            if len(sent_ids) - 8 >= elapsed * rate:
                producer.poll(0.005)
                continue
            n = len(sent_ids)
            line = p.lines[n % 2]
            frame = Frame(frame_id=new_frame_id(), line_id=line, camera_id=f"cam-{n % 4}", product="washer",
                          captured_at_ns=time.time_ns(), seq=n // 4 + 1, encoding="jpeg", image=images[n % len(images)])
            while True:
                try:
                    producer.produce(topics.frames(line), key=frame.camera_id.encode(), value=frame.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            sent_ids.add(frame.frame_id)
            producer.poll(0)
        assert producer.flush(60) == 0
        burst_end = time.monotonic()
        sent = len(sent_ids)
        p.wait_all_scored(sent, 200, "the backlog to drain")
        wait_for(lambda: try_scrape_sum(port, "lineguard_processor_consumer_lag") == 0, 30, "reported lag back to 0")
        assert worker.alive(), p.logs()
    finally:
        stop.set()
        p.stop_all()
    peak_lag = max(lag for _, _, lag in samples)
    during = [(t, rss, lag) for t, rss, lag in samples if started <= t <= burst_end]
    peak_kib = max(rss for _, rss, _ in during)
    half = started + (burst_end - started) / 2
    first = max(rss for t, rss, _ in during if t < half)
    last = max(rss for t, rss, _ in during if t >= half)
    # How much the backlog grew over the second half: what an unbounded processor would have taken in.
    lag_growth_mib = (max(lag for t, _, lag in during if t >= half)
                      - max(lag for t, _, lag in during if t < half)) * frame_bytes / 2**20
    growth_mib = (peak_kib - baseline_kib) / 1024
    backlog_mib = peak_lag * frame_bytes / 2**20
    p.sink("clickhouse", until_idle=3).wait(120)
    tally = p.tally("back_pressure", sent, sent_ids=sent_ids, burst_s=int(burst_end - started),
                    peak_lag=int(peak_lag), backlog_mib_at_peak=int(backlog_mib),
                    rss_baseline_mib=baseline_kib // 1024, rss_peak_mib=peak_kib // 1024,
                    rss_growth_mib=int(growth_mib), rss_first_half_mib=first // 1024, rss_second_half_mib=last // 1024,
                    backlog_growth_second_half_mib=int(lag_growth_mib))
    print(tally.line())
    print("rss_mib_lag_series=" + " ".join(f"{t - started:.0f}s:{rss // 1024}/{int(lag)}" for t, rss, lag in samples[::8]))
    assert peak_lag >= target_backlog / 2, "the producers did not outrun the processor: no back-pressure"
    p.delete_topics()  # hundreds of MB of frames
    # What the processor may hold: 64 frames in the batcher (message and image bytes), faust's stream
    # buffer, a 2 MiB fetch per partition, two flushes of 4 decoded images; an unbounded one would
    # take in the backlog (twice what it holds here, and growing).
    assert growth_mib < 250, f"processor RSS grew by {growth_mib:.0f} MiB under back-pressure"
    assert backlog_mib > 2 * growth_mib, "the backlog held in Kafka should far exceed what the processor holds"
    assert lag_growth_mib > 50, "the backlog did not keep growing: no sustained back-pressure"
    assert tally.verdict_frames == sent == tally.in_topics and tally.lost == 0 and tally.deadletter == 0
    assert tally.rows == sent and tally.duplicate_rows == 0


@pytest.mark.timeout(240)
def test_poison_frames_end_in_dead_letters_and_the_processor_keeps_running(stack, models: Path,
                                                                           tmp_path: Path) -> None:  # noqa: ANN001
    """Hostile frames on the real stack: each ends in lineguard.deadletter with its reason code
    (counted per reason on /metrics as well); good frames around them are scored; nothing crashes;
    the processor's memory stays where it was after the first round (a bomb allocates nothing).
    How fast good frames flow meanwhile is measured by ``lineguard bench pipeline --poison-share``."""
    from lineguard.benchmarks.hostile import poison_frames
    from lineguard.kafka import producer_client
    from lineguard.schemas import Frame, new_frame_id, topics
    from lineguard.schemas import image as imagecodec

    from fault_helpers import rss_kib, scrape

    rounds = 20
    p = FaultPipeline(stack, tmp_path, models, "poison")
    port = free_port()
    worker = p.processor(metrics_port=port)
    p.sink("clickhouse")
    line, other = p.lines
    good_jpeg, _, _ = imagecodec.encode(SyntheticCamera(size=128, seed=5, defect_rate=0).render(0).image, "jpeg")
    # Every hostile frame arrives on `line`'s topic (the two unknown_line ones name no line, or `other`).
    poison = [poison_frames(line, other, "washer", "cam-p", good_jpeg, seed=r) for r in range(rounds)]
    good = [Frame(frame_id=new_frame_id(), line_id=line, camera_id="cam-g", product="washer",
                  captured_at_ns=time.time_ns(), seq=i, encoding="jpeg", image=good_jpeg) for i in range(rounds)]
    try:
        wait_for(lambda: _up(port), 120, "the processor's metrics endpoint")
        producer = producer_client(p.kafka)

        def send_round(r: int) -> None:
            for _, payload in poison[r]:
                producer.produce(topics.frames(line), key=b"cam-p", value=payload)
            producer.produce(topics.frames(line), key=b"cam-g", value=good[r].encode())
            assert producer.flush(30) == 0

        send_round(0)  # the first round warms up decoders, the model and the dead-letter producer
        p.wait_all_scored(1, 120, "the first round handled")
        rss_warm = rss_kib(worker.pid) / 1024
        for r in range(1, rounds):
            send_round(r)
        sent = rounds * (len(poison[0]) + 1)
        p.wait_all_scored(len(good), 120, "good frames scored around the poison")
        rss_end = rss_kib(worker.pid) / 1024
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 60)
        assert worker.alive(), log_text(worker)[-3000:]
        samples = scrape(port)
    finally:
        p.stop_all()
    letters = p.dead_letters()
    by_reason = sorted(d.reason for d in letters)
    assert by_reason == sorted(reason for batch in poison for reason, _ in batch)
    assert all(d.source_topic == topics.frames(line) and d.error and d.component == "processor" for d in letters)
    reasons = Counter(by_reason)
    for reason, expected in reasons.items():
        # Every hostile frame came on `line`'s topic: the line label is the topic's, even when undecodable.
        assert samples[("lineguard_processor_dead_letters_total", (("line", line), ("reason", reason)))] == expected
    tally = p.tally("poison", sent, processor_rss_warm_mib=int(rss_warm), processor_rss_end_mib=int(rss_end))
    print(tally.line() + " reasons=" + ",".join(f"{k}:{v}" for k, v in sorted(reasons.items())))
    assert tally.in_topics == sent and tally.deadletter == rounds * len(poison[0])
    assert tally.verdict_frames == len(good) and tally.lost == 0
    assert rss_end - rss_warm < 64, f"processor RSS grew {rss_end - rss_warm:.0f} MiB over {sent} hostile frames"
    assert tally.rows == len(good) and tally.duplicate_rows == 0
