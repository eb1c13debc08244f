"""``lineguard bench pipeline``: the streaming path against its two ceilings, measured in one run.

Phases, all on the same pre-encoded frames:

1. **kafka**: raw Kafka — the frames produced and consumed with no scoring.
2. **engine**: the engine alone — JPEG decode + ONNX Runtime scoring in
   batches of ``max_batch`` in this process, no Kafka; measured before and
   after the pipeline phases, and averaged. (These two: ``pipeline_ceilings.py``.)
3. **pipeline (throughput)**: a backlog of L lines x F frames is produced
   first (cameras are other machines in a plant, so their CPU is not charged
   to the pipeline), then the processor worker(s) and the ClickHouse sink
   start (as processes, through ``lineguard.harness``); the sustained rate is taken from verdict arrival times after the
   first 10% (start-up and model loading excluded), with the CPU seconds of
   every component (processors, sink, broker) over the same window.
4. **pipeline (latency)**: frames produced live at a rate the pipeline
   sustains (``latency_load``, 60% by default, of phase 3's rate); capture-to-verdict
   latency is measured on the verdict topics, capture-to-row from the rows'
   ``ingested_at`` in ClickHouse; the verdict's own stamps split the first
   into stages (Kafka in, batch wait, scoring, send, Kafka out).
5. **workers**: with ``more_workers`` (``--workers 1,2``), phases 3 and 4
   again for each further worker count, in one consumer group.
6. **poison**: with ``poison_share`` (``--poison-share 0.2``), phase 3 again with
   that share of the frame topics' messages hostile (decompression bombs,
   undecodable images, out-of-range fields, unknown line or product, random
   bytes; ``benchmarks/hostile.py``), alternating with clean runs: the good
   frames' rate against the clean one, every hostile message counted in the
   dead-letter topic, and the processor's peak RSS in both.

The JSON keeps ``pipeline_fps``, ``engine_fps``, ``kafka_fps``,
``p50_capture_to_verdict_ms``, ``p99_capture_to_verdict_ms``,
``p99_capture_to_row_ms``, ``max_wait_ms`` and ``batch_scoring_ms``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from lineguard.components import Component
from lineguard.config import Settings
from lineguard.harness import LocalPipeline, cpu_seconds, peak_rss_mib
from lineguard.kafka import cameras_for_partitions, count_messages, ensure_topics, producer_client
from lineguard.schemas import Verdict, topics

from .hostile import poison_frames
from .pipeline_ceilings import consume, frame_bytes, measure_engine, measure_kafka, percentile, render_frames
from .report import write_report


CAMERAS_PER_LINE = 4


@dataclass
class PipelineBenchConfig:
    lines: int = 2
    frames: int = 300  # per line, throughput phase
    size: int = 256
    model_dir: Path | None = None  # folder of model folders; default: a baseline fitted here
    product: str = "washer"
    data: Path | None = None  # images to send (default: the synthetic camera's)
    defect_share: float = 0.1  # of the frames sent
    max_batch: int = 16
    max_wait_ms: int = 50
    workers: int = 1
    more_workers: tuple[int, ...] = ()  # further worker counts measured after it, for the scaling table
    latency_seconds: float = 15.0  # 0: no latency phase
    latency_load: float = 0.6
    poison_share: float = 0.0  # of the frame messages in the poison phase (0: no poison phase)


def measure_pipeline(settings: Settings, cfg: PipelineBenchConfig, model_dir: Path, jpegs: list[bytes], work: Path,
                     after_throughput: Callable[[LocalPipeline], dict[str, Any]] | None = None,
                     join_first: Callable[[LocalPipeline], None] | None = None) -> dict[str, Any]:
    """Phases 3 and 4.

    ``join_first``: the workers start before the backlog is written and this waits until they have
    joined (for per-worker shares: otherwise the first worker up can score a short backlog alone).
    ``after_throughput``: called with the workers still in their group; its figures join the result.
    """
    tag = uuid.uuid4().hex[:6]
    lines = [f"bench{tag}-{i + 1}" for i in range(cfg.lines)]
    ensure_topics(settings.kafka, lines)
    pipeline = LocalPipeline(
        settings.kafka, work / "state", lines, group=f"bench-{tag}", log_dir=work, model_dir=model_dir,
        LINEGUARD_PROCESSOR__BATCHING__MAX_BATCH=str(cfg.max_batch),
        LINEGUARD_PROCESSOR__BATCHING__MAX_WAIT_MS=str(cfg.max_wait_ms),
        # The cores shared among the workers, as on one host; each worker on its own host would take all.
        LINEGUARD_PROCESSOR__INFERENCE_THREADS=str(max(1, (os.cpu_count() or 1) // cfg.workers)),
        LINEGUARD_LOG_LEVEL="WARNING",
    )
    producer = producer_client(settings.kafka, **{"linger.ms": 5})

    def send(line: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topics.frames(line), key=key.encode(), value=value)
                return
            except BufferError:
                producer.poll(0.05)

    # The camera is the key: cameras chosen to land on every partition, so every worker gets work.
    cameras = {line: cameras_for_partitions(line, CAMERAS_PER_LINE, settings.kafka.frame_partitions) for line in lines}

    def produce(line: str, jpeg: bytes, seq: int) -> None:
        camera = cameras[line][seq % len(cameras[line])]
        send(line, camera, frame_bytes(jpeg, line, cfg.product, seq, camera))

    # Phase 3: a backlog, then the processors and the sink. With a poison share, hostile messages are
    # spread evenly among the frames of every line (phase 6); only the good frames give verdicts.
    poison_per_frame = cfg.poison_share / (1 - cfg.poison_share)
    poison_sent = dict.fromkeys(lines, 0)
    hostile: dict[str, list[bytes]] = {}  # per line, built once and sent in turn
    if cfg.poison_share > 0:
        for j, line in enumerate(lines):
            other = lines[(j + 1) % len(lines)] if len(lines) > 1 else "no-such-line"
            hostile[line] = [value for _, value in poison_frames(line, other, cfg.product, f"{line}-cam0", jpegs[0])]
    processors: list[Component] = []

    def start_workers() -> Component:
        processors.extend(pipeline.processor(LINEGUARD_PROCESSOR__PROCESSOR_ID=f"bench-{tag}-{w}")
                          for w in range(cfg.workers))
        return pipeline.sink("clickhouse")

    if join_first:
        sink = start_workers()
        try:
            join_first(pipeline)
        except BaseException:
            pipeline.stop_all()
            raise
    deadletters_before = count_messages(settings.kafka, topics.DEADLETTER)
    for i, jpeg in enumerate(jpegs):
        for line in lines:
            produce(line, jpeg, i)
            while poison_sent[line] < round((i + 1) * poison_per_frame):
                send(line, "poison", hostile[line][poison_sent[line] % len(hostile[line])])
                poison_sent[line] += 1
    producer.flush(120)
    n = len(jpegs) * len(lines)
    arrivals: list[int] = []
    verdict_topics = [topics.verdicts(l) for l in lines]

    skip = max(1, n // 10)  # start-up and model loading excluded from the rate
    # CPU seconds per component over the same window as the rate: where a 2-core machine's time goes.
    from lineguard.deploy.stack import LocalStack

    broker_pids = list(LocalStack.from_settings(settings).kafka.running().values())  # every node of a cluster
    cpu_marks: list[dict[str, float]] = []
    by_processor: Counter[str] = Counter()  # throughput-phase verdicts per worker

    def cpu_now() -> dict[str, float]:
        return {"processors": sum(cpu_seconds(p.pid) for p in processors), "sink": cpu_seconds(sink.pid),
                "kafka_broker": sum(cpu_seconds(pid) for pid in broker_pids), "bench_consumer": time.process_time()}

    def record(msg) -> None:  # noqa: ANN001
        by_processor[Verdict.decode(msg.value()).processor_id] += 1  # every verdict must decode: it counts only then
        arrivals.append(time.time_ns())
        if len(arrivals) in (skip + 1, n):
            cpu_marks.append(cpu_now())

    if not join_first:
        sink = start_workers()
    try:
        seen = consume(settings, verdict_topics, n, 900, record)
        if seen < n:
            raise RuntimeError(f"only {seen} of {n} verdicts arrived; see {work}")
        observed = after_throughput(pipeline) if after_throughput else {}
        processor_peak_rss = max(peak_rss_mib(p.pid) for p in processors)
        poison_total = sum(poison_sent.values())
        deadline = time.monotonic() + 60
        while (dead_letters := count_messages(settings.kafka, topics.DEADLETTER) - deadletters_before) < poison_total \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        arrivals.sort()
        pipeline_fps = (n - skip) / ((arrivals[-1] - arrivals[skip]) / 1e9)
        cpu_ms_per_frame = {k: round(1000 * (cpu_marks[-1][k] - cpu_marks[0][k]) / (n - skip - 1), 2)
                            for k in cpu_marks[0]} if len(cpu_marks) == 2 else {}

        # Phase 4: live frames at a rate the pipeline sustains.
        rate = max(1.0, cfg.latency_load * pipeline_fps)
        live: list[tuple[int, Verdict, int]] = []  # (arrival ns, verdict, message timestamp ms)
        expected = int(rate * cfg.latency_seconds)

        def record_live(msg) -> None:  # noqa: ANN001
            verdict = Verdict.decode(msg.value())
            live.append((time.time_ns(), verdict, msg.timestamp()[1]))

        reader = threading.Thread(
            target=lambda: consume(settings, verdict_topics, n + expected, cfg.latency_seconds + 120, record_live),
            daemon=True)
        reader.start()
        time.sleep(2.0)  # the reader joins and catches up to the backlog's verdicts first
        start = time.monotonic()
        for k in range(expected):
            due = start + k / rate
            while (delay := due - time.monotonic()) > 0:
                producer.poll(min(delay, 0.01))
            produce(lines[k % len(lines)], jpegs[k % len(jpegs)], n + k)
            producer.poll(0)
        producer.flush(60)
        reader.join(cfg.latency_seconds + 150)
        capture_start = time.time_ns() - int((time.monotonic() - start) * 1e9)
        live = [(a, v, t) for a, v, t in live if v.captured_at_ns >= capture_start - 1]
        live_lat = [(a - v.captured_at_ns) / 1e6 for a, v, _ in live]
        # Where the time goes, from the verdict's own stamps: Kafka in (capture -> processor), waiting for
        # the batch, scoring, and the verdict's way out (scored -> on its topic, read back here).
        stages = {
            "kafka_in_and_decode": [(v.scored_at_ns - v.captured_at_ns) / 1e6 - v.inference_ms - v.queue_wait_ms
                                    for _, v, _ in live],
            "batch_wait": [v.queue_wait_ms for _, v, _ in live],
            "scoring": [v.inference_ms for _, v, _ in live],
            "render_and_send": [t - v.scored_at_ns / 1e6 for _, v, t in live],  # to the message's CreateTime
            "kafka_out": [a / 1e6 - t for a, _, t in live],
        }
        time.sleep(3.0)  # the sink's flush interval
    finally:
        pipeline.stop_all()

    from lineguard.stores import ChdbStore

    store = ChdbStore(work / "state" / "chdb")
    try:
        rows = store.query(
            f"SELECT dateDiff('millisecond', captured_at, ingested_at) AS ms FROM {store.database}.verdicts FINAL "
            f"WHERE captured_at_ns >= {capture_start} AND line_id IN ({', '.join(repr(l) for l in lines)})")
        total_rows = store.query(f"SELECT count() AS n FROM {store.database}.verdicts FINAL")[0]["n"]
    finally:
        store.close()
    row_lat = [float(r["ms"]) for r in rows]
    return {
        "pipeline_fps": pipeline_fps,
        "pipeline_frames": n,
        "latency_rate_fps": rate,
        "latency_frames": len(live_lat),
        "p50_capture_to_verdict_ms": percentile(live_lat, 50),
        "p99_capture_to_verdict_ms": percentile(live_lat, 99),
        "p50_latency_stages_ms": {k: round(percentile(v, 50), 1) for k, v in stages.items()},
        "p50_capture_to_row_ms": percentile(row_lat, 50),
        "p99_capture_to_row_ms": percentile(row_lat, 99),
        "rows_in_clickhouse": int(total_rows),
        "workers": cfg.workers,
        "pipeline_cpu_ms_per_frame": cpu_ms_per_frame,
        "processor_peak_rss_mib": processor_peak_rss,
        "poison_frames": poison_total,
        "dead_letters": dead_letters,
        "verdicts_by_processor": dict(sorted(by_processor.items())),
        **observed,
    }


def measure_poison(settings: Settings, cfg: PipelineBenchConfig, model_dir: Path, jpegs: list[bytes], work: Path,
                   rounds: int = 3) -> dict[str, Any]:
    """Phase 6: throughput runs with and without hostile messages, alternating, ``rounds`` of each.

    Alternating pairs put the two conditions side by side in time, and the median of the pairs' ratios
    drops an odd slow run: a pipeline run moves by 10% or more between runs minutes apart on a shared
    machine, more than the effect measured here."""
    quick = replace(cfg, latency_seconds=0.0, workers=1)
    clean, poisoned = [], []
    for r in range(rounds):
        clean.append(measure_pipeline(settings, replace(quick, poison_share=0.0), model_dir, jpegs, work / f"clean-{r}"))
        poisoned.append(measure_pipeline(settings, quick, model_dir, jpegs, work / f"poison-{r}"))
    clean_fps = [m["pipeline_fps"] for m in clean]
    poison_fps = [m["pipeline_fps"] for m in poisoned]
    return {
        "clean_fps": clean_fps, "poison_fps": poison_fps, "pipeline_fps": float(np.mean(poison_fps)),
        "share_of_clean_fps": float(np.median(np.array(poison_fps) / np.array(clean_fps))),
        "pipeline_frames": poisoned[-1]["pipeline_frames"],
        "poison_frames": sum(m["poison_frames"] for m in poisoned),
        "dead_letters": sum(m["dead_letters"] for m in poisoned),
        "processor_peak_rss_mib": max(m["processor_peak_rss_mib"] for m in poisoned),
        "clean_processor_peak_rss_mib": max(m["processor_peak_rss_mib"] for m in clean),
    }


def prepare(cfg: PipelineBenchConfig) -> tuple[Path, Path, list[bytes]]:
    """A work folder, the folder of model folders (a baseline fitted there when none is given), the frames."""
    work = Path(tempfile.mkdtemp(prefix="lineguard-bench-"))
    model_dir = cfg.model_dir
    if model_dir is None:
        from lineguard.engines.training import train
        from lineguard.producers.synthetic import SyntheticCamera

        data = work / "data"
        SyntheticCamera(product=cfg.product, size=cfg.size, seed=1).write_mvtec(data, 60, 2, 2)
        model_dir = work / "models"
        train("baseline", data, model_dir / cfg.product, name=cfg.product, version="bench")
    return work, model_dir, render_frames(cfg.size, cfg.frames, cfg.data, cfg.defect_share)


def run(settings: Settings, cfg: PipelineBenchConfig) -> dict[str, Any]:
    if not 0.0 <= cfg.poison_share < 1.0:
        raise ValueError(f"poison_share must be in [0, 1), got {cfg.poison_share}")
    work, model_dir, jpegs = prepare(cfg)
    tag = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
                              "cpu_count": os.cpu_count(), "max_wait_ms": cfg.max_wait_ms,
                              "frame_bytes_mean": float(np.mean([len(j) for j in jpegs]))}
    result.update(measure_kafka(settings, jpegs, [f"benchraw{tag}-{i + 1}" for i in range(cfg.lines)], cfg.product))
    # The engine alone is measured before and after the pipeline and averaged: the machine's speed drifts
    # (other jobs, thermal), and the pipeline's share of the engine is the figure that matters.
    before = measure_engine(model_dir / cfg.product, jpegs * cfg.lines, cfg.max_batch)
    clean = replace(cfg, poison_share=0.0)
    result.update(measure_pipeline(settings, clean, model_dir, jpegs, work))
    after = measure_engine(model_dir / cfg.product, jpegs * cfg.lines, cfg.max_batch)
    result.update({k: (before[k] + after[k]) / 2 if isinstance(before[k], float) else before[k] for k in before})
    result["engine_fps_before_after"] = [before["engine_fps"], after["engine_fps"]]
    scaling_keys = ("pipeline_fps", "p99_capture_to_verdict_ms", "pipeline_cpu_ms_per_frame")
    result["by_workers"] = {str(cfg.workers): {k: result[k] for k in scaling_keys}}
    for workers in cfg.more_workers:
        more = measure_pipeline(settings, replace(clean, workers=workers), model_dir, jpegs, work / f"workers-{workers}")
        result["by_workers"][str(workers)] = {k: more[k] for k in scaling_keys}
    if cfg.poison_share > 0:
        result["poison"] = measure_poison(settings, cfg, model_dir, jpegs, work / "poison")
    result["pipeline_share_of_engine"] = result["pipeline_fps"] / result["engine_fps"]
    result["pipeline_share_of_kafka"] = result["pipeline_fps"] / result["kafka_fps"]
    result["latency_budget_ms"] = cfg.max_wait_ms + 3 * result["batch_scoring_ms"]
    result["work_dir"] = str(work)
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        ("raw Kafka (produce + consume, no scoring)", f"{result['kafka_fps']:.1f} frames/s", ""),
        ("engine alone (decode + score, batch {})".format(result["config"]["max_batch"]),
         f"{result['engine_fps']:.1f} frames/s", f"batch {result['batch_scoring_ms']:.1f} ms (median)"),
        ("pipeline (producers → Kafka → processor → ClickHouse)", f"{result['pipeline_fps']:.1f} frames/s",
         f"{100 * result['pipeline_share_of_engine']:.0f}% of engine, {100 * result['pipeline_share_of_kafka']:.0f}% of Kafka"),
        (f"capture → verdict at {result['latency_rate_fps']:.0f} frames/s",
         f"p50 {result['p50_capture_to_verdict_ms']:.0f} ms, p99 {result['p99_capture_to_verdict_ms']:.0f} ms",
         f"budget max_wait + 3 x batch = {result['latency_budget_ms']:.0f} ms"),
        ("capture → row in ClickHouse", f"p50 {result['p50_capture_to_row_ms']:.0f} ms, "
         f"p99 {result['p99_capture_to_row_ms']:.0f} ms", "sink flush interval included"),
    ]
    stages = result.get("p50_latency_stages_ms") or {}
    if stages:
        rows.append(("capture → verdict, p50 per stage", ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items()),
                     "from the verdict's scored_at, queue_wait_ms, inference_ms"))
    cpu = result.get("pipeline_cpu_ms_per_frame") or {}
    if cpu:
        rows.append(("CPU ms per frame (throughput phase)", ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()),
                     f"engine alone {result['engine_cpu_ms_per_frame']:.1f}; {result['cpu_count']} CPUs"))
    by_workers = result.get("by_workers") or {}
    if len(by_workers) > 1:
        one = next(iter(by_workers.values()))["pipeline_fps"]
        for workers, r in by_workers.items():
            rows.append((f"{workers} processor worker(s), one consumer group", f"{r['pipeline_fps']:.1f} frames/s",
                         f"{r['pipeline_fps'] / one:.2f}x of the first; p99 capture → verdict "
                         f"{r['p99_capture_to_verdict_ms']:.0f} ms"))
    poison = result.get("poison")
    if poison:
        rounds = ", ".join(f"{c:.1f} / {p:.1f}" for c, p in zip(poison["clean_fps"], poison["poison_fps"]))
        rows.append((f"pipeline with {100 * result['config']['poison_share']:.0f}% hostile messages",
                     f"{poison['pipeline_fps']:.1f} good frames/s",
                     f"{100 * poison['share_of_clean_fps']:.0f}% of the clean rate (median of alternated pairs, clean / hostile: "
                     f"{rounds}); {poison['dead_letters']} dead letters for {poison['poison_frames']} hostile; "
                     f"processor peak RSS {poison['processor_peak_rss_mib']:.0f} MiB "
                     f"(clean {poison['clean_processor_peak_rss_mib']:.0f})"))
    out = ["| measured | figure | note |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown)
