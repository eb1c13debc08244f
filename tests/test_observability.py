"""Prometheus metrics of real ``lineguard`` processes, read by scraping their /metrics endpoints.

The producer, the processor and the ClickHouse sink each get a ``metrics_port``
(from the environment, as a plant sets it); the test streams frames plus one
corrupt frame through them and checks the figures every endpoint reports
against what was sent: frames in and out, batch sizes, scoring latency,
consumer lag, dead letters by reason, sink writes and retries.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from lineguard.kafka import producer_client
from lineguard.metrics import serve_metrics
from lineguard.schemas import topics

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import FaultPipeline, free_port, metric_sum, scrape, try_scrape_sum  # noqa: E402
from pipeline_helpers import wait_for  # noqa: E402
from test_faults import models  # noqa: E402,F401 - the module's fitted model fixture

pytestmark = [pytest.mark.kafka]


def test_metrics_port_zero_opens_nothing() -> None:
    from lineguard.config import Settings

    settings = Settings()
    assert settings.producer.metrics_port == settings.processor.metrics_port == settings.sinks.metrics_port == 0
    assert serve_metrics(0) is None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_component_exposes_its_metrics_on_the_real_endpoint(stack, models: Path,  # noqa: F811,ANN001
                                                                  tmp_path: Path) -> None:
    per_line = 40
    p = FaultPipeline(stack, tmp_path, models, "metrics")
    proc_port, sink_port, prod_ports = free_port(), free_port(), [free_port(), free_port()]
    p.processor(metrics_port=proc_port)
    p.sink("clickhouse", metrics_port=sink_port)
    try:
        wait_for(lambda: try_scrape_sum(proc_port, "lineguard_processor_frames_in_total") is not None
                 and try_scrape_sum(sink_port, "lineguard_sink_items_written_total") is not None, 120,
                 "processor and sink endpoints")
        producers = [p.start(f"produce-{line}", ["produce", "--line", line, "--camera", f"cam{i}", "--product",
                                                 "washer", "--count", str(per_line), "--fps", "10", "--size", "128"],
                             LINEGUARD_PRODUCER__METRICS_PORT=str(port))
                     for i, (line, port) in enumerate(zip(p.lines, prod_ports))]
        # Each producer's endpoint scraped on its own thread while it runs (one slow scrape must not hide
        # the other's sending window); the counters only grow, so the largest reading is kept.
        seen: dict[int, tuple[float, float]] = {}

        def watch(line: str, port: int, producer) -> None:  # noqa: ANN001
            deadline = time.monotonic() + 120
            while producer.alive() and time.monotonic() < deadline:
                try:
                    samples = scrape(port, timeout_s=2)
                    reading = (metric_sum(samples, "lineguard_producer_frames_sent_total", line=line),
                               metric_sum(samples, "lineguard_producer_frames_delivered_total", line=line))
                    seen[port] = max(seen.get(port, reading), reading)
                except OSError:  # not serving yet, or just gone
                    pass
                time.sleep(0.2)

        watchers = [threading.Thread(target=watch, args=args, daemon=True)
                    for args in zip(p.lines, prod_ports, producers)]
        for w in watchers:
            w.start()
        for w in watchers:
            w.join(130)
        sent = p.wait_producers(producers)
        bad = producer_client(p.kafka)
        bad.produce(topics.frames(p.lines[0]), key=b"cam0", value=b"\x93not a frame")
        assert bad.flush(30) == 0
        p.wait_all_scored(sent, 120)
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 60)
        wait_for(lambda: try_scrape_sum(proc_port, "lineguard_processor_consumer_lag") == 0
                 and try_scrape_sum(sink_port, "lineguard_sink_consumer_lag") == 0, 30, "lag reported as 0")
        proc, sink = scrape(proc_port), scrape(sink_port)
    finally:
        p.stop_all()

    # Producers: the endpoint answered while frames were being sent.
    assert len(seen) == 2 and all(0 < sent_n <= per_line and delivered <= sent_n for sent_n, delivered in seen.values())
    # Processor: frames in per line, verdicts out, batches, latency, lag, dead letters by reason.
    for line in p.lines:
        extra = 1 if line == p.lines[0] else 0
        assert metric_sum(proc, "lineguard_processor_frames_in_total", line=line) == per_line + extra
        assert metric_sum(proc, "lineguard_processor_verdicts_out_total", line=line) == per_line
    batches = metric_sum(proc, "lineguard_processor_batch_size_count")
    assert batches >= 1 and metric_sum(proc, "lineguard_processor_batch_size_sum") == sent
    assert metric_sum(proc, "lineguard_processor_scoring_seconds_count") == batches
    assert metric_sum(proc, "lineguard_processor_scoring_seconds_sum") > 0
    assert metric_sum(proc, "lineguard_processor_dead_letters_total", reason="malformed") == 1
    assert metric_sum(proc, "lineguard_processor_pending_frames") == 0
    lag_series = [labels for (name, labels) in proc if name == "lineguard_processor_consumer_lag"]
    assert len(lag_series) == 2 * p.kafka.frame_partitions  # one per frame partition it holds
    assert metric_sum(proc, "process_resident_memory_bytes") > 0  # the client's process collector
    # Sink: consumed and written every verdict, committed, no retries, lag 0.
    assert metric_sum(sink, "lineguard_sink_messages_consumed_total", kind="clickhouse") == sent
    assert metric_sum(sink, "lineguard_sink_items_written_total", kind="clickhouse") == sent
    assert metric_sum(sink, "lineguard_sink_commits_total", kind="clickhouse") >= 1
    assert metric_sum(sink, "lineguard_sink_retries_total", kind="clickhouse") == 0
    assert metric_sum(sink, "lineguard_sink_write_seconds_count", kind="clickhouse") >= 1
    assert metric_sum(sink, "lineguard_sink_retrying", kind="clickhouse") == 0
    print(f"metrics: producer_endpoints={len(seen)} processor_frames_in={sent + 1} verdicts_out={sent} "
          f"batches={int(batches)} deadletter_malformed=1 sink_written={sent} lag=0")
