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


# --- The alerting metrics, unit-tested on the processor, registry, sink and API objects (no broker) ---------
# Read from prometheus_client's default registry (where each part registers), as deltas: other tests in
# the same process count into the same series, so every test here uses line names of its own.

def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def _label_sets(name: str) -> list[dict[str, str]]:
    from prometheus_client import REGISTRY

    return [dict(s.labels) for family in REGISTRY.collect() for s in family.samples if s.name == name]


class _FakeProducer:
    """faust's producer as FrameProcessor._publish uses it: every send acknowledged at once."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    async def send(self, topic, key, value, partition, timestamp, headers):  # noqa: ANN001, ANN201
        import asyncio

        self.topics.append(topic)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class _FakeStream:
    def __init__(self) -> None:
        self.acked: list[object] = []

    async def ack(self, event) -> None:  # noqa: ANN001
        self.acked.append(event)


def _event(topic: str, value: bytes, offset: int):  # noqa: ANN202
    from types import SimpleNamespace

    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset), value=value)


def test_processor_counts_frames_per_camera_verdicts_by_result_and_dead_letters_by_line(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from lineguard.config import Settings
    from lineguard.processors import metrics as prom
    from lineguard.processors.app import FrameProcessor
    from lineguard.schemas import Frame, new_frame_id
    from lineguard.schemas import image as imagecodec
    from test_processor_core import _normal, _save_baseline

    rng = np.random.default_rng(4)
    _save_baseline(tmp_path / "models" / "widget", rng, version="m1")
    settings = Settings(processor={"model_dir": str(tmp_path / "models"), "lines": ["obsA"]},
                        state_dir=str(tmp_path / "state"))
    app = SimpleNamespace(producer=_FakeProducer(), rebalancing=False)
    line, topic = "obsA", topics.frames("obsA")
    good, _, _ = imagecodec.encode(_normal(rng), "png")
    hot = np.full((64, 64, 3), 255, np.uint8)  # far from the normal grey: judged defective
    bad, _, _ = imagecodec.encode(hot, "png")

    def frame(camera: str, image: bytes, seq: int) -> bytes:
        return Frame(frame_id=new_frame_id(), line_id=line, camera_id=camera, product="widget",
                     captured_at_ns=time.time_ns(), seq=seq, encoding="png", image=image).encode()

    before = {
        "cam1": _sample("lineguard_processor_frames_in_total", line=line, camera="cam1"),
        "nocam": _sample("lineguard_processor_frames_in_total", line=line, camera=""),
        "pass": _sample("lineguard_processor_verdicts_total", line=line, result="pass"),
        "defective": _sample("lineguard_processor_verdicts_total", line=line, result="defective"),
        "out": _sample("lineguard_processor_verdicts_out_total", line=line),
        "malformed": _sample("lineguard_processor_dead_letters_total", line=line, reason="malformed"),
    }

    async def main() -> FrameProcessor:
        processor = FrameProcessor(app, settings)
        processor.stream = _FakeStream()
        processor.registry.load_all()
        events = [_event(topic, frame("cam1", good, 0), 0), _event(topic, frame("cam1", good, 1), 1),
                  _event(topic, frame("cam2", bad, 0), 2), _event(topic, b"\x93not a frame", 3)]
        for event in events:
            await processor.accept(event)
        await processor.batcher.drain()
        await asyncio.gather(*processor._dead_letter_tasks)
        assert len(processor.stream.acked) == len(events)
        processor.executor.shutdown()
        return processor

    asyncio.run(main())
    assert _sample("lineguard_processor_frames_in_total", line=line, camera="cam1") - before["cam1"] == 2
    assert _sample("lineguard_processor_frames_in_total", line=line, camera="cam2") == 1
    assert _sample("lineguard_processor_frames_in_total", line=line, camera="") - before["nocam"] == 1  # undecodable
    assert _sample("lineguard_processor_verdicts_total", line=line, result="pass") - before["pass"] == 2
    assert _sample("lineguard_processor_verdicts_total", line=line, result="defective") - before["defective"] == 1
    assert _sample("lineguard_processor_verdicts_out_total", line=line) - before["out"] == 3  # still the sum
    # The undecodable message names no line; the topic it came from does.
    assert _sample("lineguard_processor_dead_letters_total", line=line, reason="malformed") - before["malformed"] == 1
    assert {tuple(sorted(s)) for s in _label_sets("lineguard_processor_dead_letters_total")} == {("line", "reason")}
    assert {tuple(sorted(s)) for s in _label_sets("lineguard_processor_verdicts_total")} == {("line", "result")}
    info = [labels for labels in _label_sets("lineguard_processor_model_info") if labels["version"] == "m1"]
    assert info == [{"product": "widget", "line": "", "model_name": "widget", "version": "m1", "precision": "fp32"}]
    assert prom.camera_label(line, "cam1") == "cam1"


def test_camera_labels_are_bounded_per_line(monkeypatch) -> None:  # noqa: ANN001
    from lineguard.processors import metrics as prom

    monkeypatch.setattr(prom, "MAX_CAMERAS_PER_LINE", 3)
    labels = [prom.camera_label("obsBounded", f"cam{i}") for i in range(5)]
    assert labels == ["cam0", "cam1", "cam2", "other", "other"]
    assert prom.camera_label("obsBounded", "cam1") == "cam1"  # a known camera keeps its label
    assert prom.camera_label("obsOtherLine", "cam9") == "cam9"  # the cap is per line
    assert prom.camera_label("obsBounded", prom.NO_CAMERA) == ""


def test_model_info_follows_loads_and_hot_reloads(tmp_path: Path) -> None:
    import numpy as np

    from lineguard.inspection import ModelRegistry
    from lineguard.processors import metrics as prom
    from test_processor_core import _save_baseline

    rng = np.random.default_rng(5)
    _save_baseline(tmp_path / "widget", rng, version="info-1")
    _save_baseline(tmp_path / "widget@obsL", rng, version="info-L")
    registry = ModelRegistry(tmp_path, poll_s=0.01)
    registry.on_load.append(prom.model_loaded)

    def versions() -> dict[tuple[str, str], str]:
        return {(s["product"], s["line"]): s["version"] for s in _label_sets("lineguard_processor_model_info")
                if s["version"].startswith("info-")}

    registry.load_all()
    assert versions() == {("widget", ""): "info-1", ("widget", "obsL"): "info-L"}
    assert _sample("lineguard_processor_model_info", product="widget", line="", model_name="widget",
                   version="info-1", precision="fp32") == 1
    time.sleep(0.05)
    _save_baseline(tmp_path / "widget", rng, version="info-2")  # retrained: picked up without a restart
    time.sleep(0.05)
    assert registry.get("widget").engine.version == "info-2"
    assert versions() == {("widget", ""): "info-2", ("widget", "obsL"): "info-L"}  # the old version's series is gone


def test_a_failing_load_hook_never_refuses_the_model(tmp_path: Path) -> None:
    import numpy as np

    from lineguard.inspection import ModelRegistry
    from test_processor_core import _save_baseline

    _save_baseline(tmp_path / "widget", np.random.default_rng(6), version="hooked")
    registry = ModelRegistry(tmp_path)
    registry.on_load.append(lambda model: 1 / 0)
    assert registry.get("widget").engine.version == "hooked"


def test_sink_dead_letters_carry_the_line_of_their_source_topic() -> None:
    from types import SimpleNamespace

    from lineguard.config import Settings
    from lineguard.sinks.deadletters import DeadLetterOutbox

    class Producer:  # confluent-kafka's, as the outbox uses it: delivered at flush
        def __init__(self) -> None:
            self.pending: list = []

        def produce(self, topic, value, key, on_delivery) -> None:  # noqa: ANN001
            self.pending.append(on_delivery)

        def poll(self, _timeout) -> None:  # noqa: ANN001
            pass

        def flush(self, _timeout) -> int:  # noqa: ANN001
            for callback in self.pending:
                callback(None, None)
            self.pending.clear()
            return 0

    def message(topic: str):  # noqa: ANN202
        return SimpleNamespace(topic=lambda: topic, partition=lambda: 0, offset=lambda: 7, value=lambda: b"x",
                               key=lambda: b"k")

    outbox = DeadLetterOutbox(Settings(), "clickhouse", SimpleNamespace(dead_lettered=0))
    outbox._producer = Producer()
    before = _sample("lineguard_sink_dead_letters_total", kind="clickhouse", line="obsS", reason="write_rejected")
    outbox.send(message(topics.verdicts("obsS")), "write_rejected", "refused")
    outbox.send(message("not-a-line-topic"), "malformed", "garbage")
    outbox.confirm()
    assert _sample("lineguard_sink_dead_letters_total", kind="clickhouse", line="obsS",
                   reason="write_rejected") - before == 1
    assert _sample("lineguard_sink_dead_letters_total", kind="clickhouse", line="not-a-line-topic",
                   reason="malformed") >= 1


def test_api_exports_score_drift_from_the_drift_view_cached(tmp_path: Path) -> None:
    import uuid

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from lineguard.analytics.schema import ModelReference, create_analytics_schema, store_model_references
    from lineguard.api.drift_metrics import DriftCollector
    from lineguard.config import Settings
    from lineguard.schemas import Verdict
    from lineguard.stores import ChdbStore

    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    now_ns = time.time_ns()

    def verdicts(line: str, n: int, low: bool) -> list[Verdict]:
        # Scores in the reference's first bin only (low) or spread like it: high PSI, or low.
        return [Verdict(frame_id=uuid.uuid4().hex, line_id=line, camera_id="cam1", product="washer", seq=i,
                        captured_at_ns=now_ns - i * 1_000_000, scored_at_ns=now_ns, model_name="washer",
                        model_version="d1", score=(0.1 if low else (i % 4) * 0.25 + 0.1), threshold=2.0,
                        is_defective=False, heatmap_key=None, queue_wait_ms=1.0, inference_ms=1.0,
                        processor_id="p1")
                for i in range(n)]

    store = ChdbStore(tmp_path / "chdb")
    try:
        create_analytics_schema(store)
        store_model_references(store, [ModelReference("washer", "d1", "washer", "baseline", 2.0, edges,
                                                      [0.25, 0.25, 0.25, 0.25], 200)])
        store.insert_verdicts(verdicts("obsDrift", 200, low=True) + verdicts("obsStable", 200, low=False)
                              + verdicts("obsQuiet", 20, low=True))

        class Holder:  # the API's StoreHolder, as the collector uses it
            settings = Settings()
            opened = True
            queries = 0

            def run(self, fn):  # noqa: ANN001, ANN201
                Holder.queries += 1
                return fn(store)

        registry = CollectorRegistry()
        registry.register(DriftCollector(Holder(), cache_s=3600))
        assert Holder.queries == 0  # registering does not query
        first = generate_latest(registry).decode()
        second = generate_latest(registry).decode()
    finally:
        store.close()
    assert Holder.queries == 1 and first == second  # cached
    psi = {(s.labels["line"], s.labels["product"]): s.value for family in text_string_to_metric_families(first)
           for s in family.samples if s.name == "lineguard_score_drift_psi"}
    assert set(psi) == {("obsDrift", "washer"), ("obsStable", "washer")}  # obsQuiet: under 100 frames
    assert psi[("obsDrift", "washer")] > 0.25 and psi[("obsStable", "washer")] < 0.1
    assert 'lineguard_score_drift_frames{line="obsDrift",product="washer"} 200.0' in first
    assert "lineguard_score_drift_updated_timestamp_seconds" in first


def test_drift_metrics_never_open_chdb_and_keep_the_last_figures_on_failure(monkeypatch) -> None:  # noqa: ANN001
    from prometheus_client import CollectorRegistry, generate_latest

    from lineguard.api.drift_metrics import DriftCollector
    from lineguard.config import Settings

    holder = type("Holder", (), {"settings": Settings(), "opened": False})()  # chdb backend, not opened
    collector = DriftCollector(holder, cache_s=0)
    answers: list = [[{"line_id": "obsF", "model_name": "washer", "psi": 0.4, "frames": 150}], RuntimeError("down")]

    def query() -> list:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(collector, "_query", query)
    registry = CollectorRegistry()
    registry.register(collector)
    assert "lineguard_score_drift_psi{" not in generate_latest(registry).decode()  # chdb: a scrape never opens it
    assert len(answers) == 2
    holder.opened = True  # the dashboard opened it
    assert 'lineguard_score_drift_psi{line="obsF",product="washer"} 0.4' in generate_latest(registry).decode()
    assert 'lineguard_score_drift_psi{line="obsF",product="washer"} 0.4' in generate_latest(registry).decode()
    assert not answers  # the failing query was made, and the last figures kept


def test_drift_gauge_takes_the_newest_hour_with_enough_frames() -> None:
    import datetime as dt

    from lineguard.api.drift_metrics import latest_per_line

    h0, h1 = dt.datetime(2024, 5, 6, 9), dt.datetime(2024, 5, 6, 10)

    def row(period, version, frames, psi):  # noqa: ANN001, ANN202
        return {"line_id": "l1", "model_name": "washer", "model_version": version, "period": period,
                "frames": frames, "psi": psi}

    # 10:00 has only 12 frames so far: 09:00 stands. Within 09:00 a model change: the version with more frames.
    rows = [row(h0, "v1", 300, 0.3), row(h0, "v2", 150, 0.05), row(h1, "v2", 12, 0.9)]
    assert latest_per_line(rows, 100) == [rows[0]]
    rows.append(row(h1, "v2", 120, 0.02))
    assert latest_per_line(rows, 100) == [rows[-1]]
    assert latest_per_line([row(h0, "v1", 300, float("nan"))], 100) == []
