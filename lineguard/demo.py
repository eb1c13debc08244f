"""``lineguard demo``: the whole platform on one machine, on the embedded defaults.

Steps: start the local Kafka broker, write a synthetic camera dataset, fit
the baseline engine on its normal images, start a processor worker and the
two sinks (ClickHouse on chdb, heatmaps to a local folder), stream frames
from two lines (plus a few deliberately broken frames, to show the
dead-letter path), wait until every frame has a verdict or a dead letter,
drain the sinks, and print per-line figures from a ClickHouse SQL query.

Every component runs as its own ``lineguard`` subprocess, as it would in a
plant; they meet only through Kafka topics. The last line printed is
machine-readable: ``demo: frames=<n> verdicts=<n> deadletter=<n> heatmaps=<n>``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from .components import Component, component_env
from .config import Settings
from .logs import get_logger

log = get_logger("lineguard.demo")
PRODUCT = "washer"


class _Children:
    """The demo's child processes, logs under ``<state>/logs``; all stopped on the way out."""

    def __init__(self, state_dir: Path) -> None:
        self.env = component_env(state_dir=state_dir)
        self.log_dir = state_dir / "logs"
        self.running: dict[str, Component] = {}

    def start(self, name: str, args: list[str]) -> Component:
        self.running[name] = Component(args, self.env, self.log_dir / f"demo-{name}.log")
        return self.running[name]

    def run(self, name: str, args: list[str], timeout: float = 600) -> str:
        """Run to completion; raise with the log tail on failure."""
        child = self.start(name, args)
        code = child.wait(timeout)
        del self.running[name]
        if code != 0:
            raise RuntimeError(f"{name} failed ({code}):\n{child.tail(30)}")
        return child.output()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.running.pop(name).stop()


def _produce_bad_frames(settings: Settings, line: str) -> int:
    """Two frames that must end as dead letters: a corrupt JPEG and a product with no model."""
    from confluent_kafka import Producer

    from .kafka_admin import producer_config
    from .schemas import Frame, new_frame_id, topics

    producer = Producer(producer_config(settings.kafka))
    bad = [
        Frame(frame_id=new_frame_id(), line_id=line, camera_id="cam-bad", product=PRODUCT,
              captured_at_ns=time.time_ns(), seq=0, encoding="jpeg", image=b"\xff\xd8\xff\xe0 not a jpeg"),
        Frame(frame_id=new_frame_id(), line_id=line, camera_id="cam-bad", product="unknown-part",
              captured_at_ns=time.time_ns(), seq=1, encoding="raw", image=bytes(64 * 64 * 3),
              dtype="uint8", shape=[64, 64, 3]),
    ]
    for frame in bad:
        producer.produce(topics.frames(line), key=frame.camera_id.encode(), value=frame.encode())
    if producer.flush(30) != 0:
        raise RuntimeError("could not deliver the demo's bad frames")
    return len(bad)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .deploy.stack import LocalStack
    from .kafka_admin import count_messages, ensure_topics, group_lag
    from .schemas import topics

    started = time.time()
    state = settings.state_dir
    lines = [f"line{i + 1}" for i in range(args.lines)]
    demo_dir = state / "demo"
    models = demo_dir / "models"
    procs = _Children(state)

    print(f"[1/7] starting the local Kafka broker (state in {state})", flush=True)
    stack = LocalStack.from_settings(settings)
    we_started_kafka = stack.running("kafka") is None
    info = stack.up(with_s3=False)
    settings.kafka.bootstrap_servers = info["kafka_bootstrap"]
    ensure_topics(settings.kafka, lines)
    watched = [topics.frames(l) for l in lines] + [topics.verdicts(l) for l in lines] + [topics.DEADLETTER]
    before = {t: count_messages(settings.kafka, t) for t in watched}

    def delta(topic: str) -> int:
        return count_messages(settings.kafka, topic) - before[topic]

    try:
        print("[2/7] writing a synthetic camera dataset and fitting the baseline engine", flush=True)
        data = demo_dir / "data" / PRODUCT
        if not (data / "train" / "good").is_dir():
            procs.run("dataset", ["produce", "--write-dataset", str(data), "--product", PRODUCT,
                                  "--size", str(args.size), "--n-train", "200", "--n-test-good", "10",
                                  "--n-test-defect", "10"])
        procs.run("train", ["train", "--model", "baseline", "--data", str(data), "--out", str(models / PRODUCT),
                            "--name", PRODUCT])

        print("[3/7] starting a processor worker and the ClickHouse and heatmap sinks", flush=True)
        processor = procs.start("processor", ["process", "--lines", ",".join(lines), "--model-dir", str(models)])
        procs.start("sink-clickhouse", ["sink", "clickhouse", "--lines", ",".join(lines)])
        procs.start("sink-heatmaps", ["sink", "heatmaps", "--lines", ",".join(lines)])

        print(f"[4/7] streaming {args.frames} frames on each of {len(lines)} lines", flush=True)
        producers = {
            line: procs.start(f"produce-{line}", [
                "produce", "--line", line, "--camera", f"{line}-cam1", "--product", PRODUCT,
                "--source", "synthetic", "--count", str(args.frames), "--fps", str(args.fps),
                "--size", str(args.size), "--defect-rate", "0.15", "--seed", str(i + int(started)),
            ])
            for i, line in enumerate(lines)
        }
        bad = _produce_bad_frames(settings, lines[0])
        sent = bad
        for line, child in producers.items():
            code = child.wait(timeout=600)
            match = re.search(r"delivered=(\d+)", child.tail(5))
            if code != 0 or not match:
                raise RuntimeError(f"producer for {line} failed:\n{child.tail()}")
            sent += int(match.group(1))

        print("[5/7] waiting for every frame to get a verdict or a dead letter", flush=True)
        deadline = time.monotonic() + args.timeout
        while True:
            verdicts = sum(delta(topics.verdicts(l)) for l in lines)
            dead = delta(topics.DEADLETTER)
            if verdicts + dead >= sent:
                break
            if not processor.alive():
                raise RuntimeError(f"the processor exited:\n{processor.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {verdicts} verdicts + {dead} dead letters of {sent} frames")
            time.sleep(0.5)

        print("[6/7] draining the sinks", flush=True)
        verdict_topics = [topics.verdicts(l) for l in lines]
        heatmap_topics = [topics.heatmaps(l) for l in lines]
        while (group_lag(settings.kafka, "lineguard-sink-clickhouse", verdict_topics)
               + group_lag(settings.kafka, "lineguard-sink-heatmaps", heatmap_topics)) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the sinks to commit every verdict and heatmap")
            time.sleep(0.5)
    finally:  # SIGTERM: the processor and the sinks finish their batch and commit
        procs.stop_all()

    print("[7/7] per-line figures from ClickHouse", flush=True)
    from .sinks.clickhouse import open_store

    since = f"toDateTime64({started:.3f}, 3, 'UTC')"
    with open_store(settings) as store:
        rows = store.query(
            f"""
            SELECT line_id, count() AS frames, countIf(is_defective) AS defective,
                   round(100 * avg(is_defective), 1) AS defect_pct,
                   round(quantile(0.5)(score), 3) AS p50_score, round(max(score), 3) AS max_score,
                   round(quantile(0.99)(inference_ms), 1) AS p99_inference_ms
            FROM {store.database}.verdicts FINAL
            WHERE captured_at >= {since}
            GROUP BY line_id ORDER BY line_id
            """
        )
        stored = store.query(f"SELECT count() AS n FROM {store.database}.verdicts FINAL WHERE captured_at >= {since}")[0]["n"]
    header = f"{'line':<8}{'frames':>8}{'defective':>11}{'defect %':>10}{'p50 score':>11}{'max score':>11}{'p99 infer ms':>14}"
    print(header)
    for r in rows:
        print(f"{r['line_id']:<8}{r['frames']:>8}{r['defective']:>11}{r['defect_pct']:>10}"
              f"{r['p50_score']:>11}{r['max_score']:>11}{r['p99_inference_ms']:>14}")
    heatmap_dir = settings.heatmap_dir
    heatmaps = sum(1 for p in heatmap_dir.rglob("*.png") if p.stat().st_mtime >= started) if heatmap_dir.exists() else 0
    print(f"rows in ClickHouse (deduplicated): {stored}; ClickHouse data: {settings.chdb_path}")
    print(f"heatmaps: {heatmaps} overlays under {heatmap_dir}; logs: {state / 'logs'}")
    verdicts = sum(delta(topics.verdicts(l)) for l in lines)
    dead = delta(topics.DEADLETTER)
    if we_started_kafka and not args.keep_stack:
        stack.down()
    print(f"demo: frames={sent} verdicts={verdicts} deadletter={dead} heatmaps={heatmaps}", flush=True)
    return 0 if verdicts + dead == sent and stored == verdicts else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole platform locally on the embedded defaults")
    p.add_argument("--lines", type=int, default=2, help="number of production lines (default 2)")
    p.add_argument("--frames", type=int, default=150, help="frames per line (default 150)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate per camera (default 25)")
    p.add_argument("--size", type=int, default=256, help="synthetic image size in pixels")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all verdicts")
    p.add_argument("--keep-stack", action="store_true", help="leave Kafka running afterwards")
    p.set_defaults(handler=run_demo)
