"""``lineguard demo``: the whole platform on one machine, with the PatchCore engine, on the embedded defaults.

Steps: start the local Kafka broker; write a synthetic camera dataset and fit PatchCore on its
normal images (few images, a small memory bank: about a minute on two cores); start a processor
worker and the two sinks (ClickHouse on chdb, heatmaps to a local folder); stream frames from two
lines (plus a few deliberately broken frames, to show the dead-letter path); wait until every
frame has a verdict or a dead letter; drain the sinks; then score the run as a plant engineer
would: per line, the defective parts caught of those the camera made defective, the false alarms
among the good ones, and p99 capture-to-verdict.

The camera's ground truth travels in each frame's ``meta`` (``gt_defective``), which the processor
ignores; the demo joins it to the verdicts by frame id after the run. Every component runs as its
own ``lineguard`` subprocess (``lineguard.harness``), as in a plant. The last line printed is
machine-readable::

    demo: frames=<n> verdicts=<n> deadletter=<n> heatmaps=<n> caught=<n>/<n> false_alarms=<n>/<n>
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .config import Settings
from .logs import get_logger

if TYPE_CHECKING:  # the CLI imports this module to register it: heavy imports wait until the demo runs
    from .kafka import Record
    from .schemas import Frame, Verdict

log = get_logger("lineguard.demo")
PRODUCT = "washer"
GROUP = "lineguard-demo"  # the processors' consumer group; the sinks' are "<GROUP>-sink-<kind>"
# The fit: few normal images and PatchCore's 1% coreset keep it near a minute on two cores.
TRAIN_IMAGES = 40
CORESET_RATIO = 0.01
LABELLED_DEFECTS = 10  # for the threshold only, never fitted on
# One belt (the synthetic camera's seed) for the training images and both lines' cameras, as one
# camera model on one conveyor; the lines stream frames far past the training images' indices.
BELT_SEED = 0
FIRST_STREAMED_INDEX = 10_000


@dataclass
class LineFigures:
    """One line's run against the camera's ground truth (frames that carry none are not counted)."""

    line: str
    frames: int = 0        # frames with ground truth and a verdict
    defective: int = 0     # of those, made defective by the camera
    caught: int = 0        # defective parts the verdict flagged
    false_alarms: int = 0  # good parts the verdict flagged
    capture_to_verdict_ms: list[float] = field(default_factory=list)

    @property
    def good(self) -> int:
        return self.frames - self.defective

    @property
    def p99_ms(self) -> float:
        import numpy as np

        values = self.capture_to_verdict_ms
        return float(np.percentile(values, 99)) if values else float("nan")


def score_run(frames: Iterable[Frame], verdicts: Iterable[Verdict]) -> dict[str, LineFigures]:
    """Per line: the verdicts judged against the ``gt_defective`` the camera put in each frame's meta.

    A frame scored twice (at-least-once delivery) counts once, by its first verdict: the one a
    line controller acted on. Capture-to-verdict is the verdict's own stamps (scored - captured)."""
    truth = {f.frame_id: bool(f.meta["gt_defective"]) for f in frames if "gt_defective" in (f.meta or {})}
    first: dict[str, Verdict] = {}
    for v in verdicts:
        if v.frame_id in truth and (v.frame_id not in first or v.scored_at_ns < first[v.frame_id].scored_at_ns):
            first[v.frame_id] = v
    figures: dict[str, LineFigures] = {}
    for frame_id, v in first.items():
        fig = figures.setdefault(v.line_id, LineFigures(v.line_id))
        fig.frames += 1
        if truth[frame_id]:
            fig.defective += 1
            fig.caught += v.is_defective
        else:
            fig.false_alarms += v.is_defective
        fig.capture_to_verdict_ms.append((v.scored_at_ns - v.captured_at_ns) / 1e6)
    return dict(sorted(figures.items()))


def summary_line(figures: dict[str, LineFigures], frames: int, verdicts: int, deadletter: int, heatmaps: int) -> str:
    """The demo's machine-readable last line (totals over the lines)."""
    lines = figures.values()
    caught, defective = sum(f.caught for f in lines), sum(f.defective for f in lines)
    false_alarms, good = sum(f.false_alarms for f in lines), sum(f.good for f in lines)
    return (f"demo: frames={frames} verdicts={verdicts} deadletter={deadletter} heatmaps={heatmaps} "
            f"caught={caught}/{defective} false_alarms={false_alarms}/{good}")


def _figures_table(figures: dict[str, LineFigures]) -> str:
    rows = [f"{'line':<8}{'parts':>7}{'defective':>11}{'caught':>9}{'good':>7}{'false alarms':>14}"
            f"{'p99 capture->verdict':>22}"]
    for f in figures.values():
        rows.append(f"{f.line:<8}{f.frames:>7}{f.defective:>11}{f'{f.caught}/{f.defective}':>9}{f.good:>7}"
                    f"{f'{f.false_alarms}/{f.good}':>14}{f'{f.p99_ms:.0f} ms':>22}")
    return "\n".join(rows)


def _write_datasets(data: Path, defects: Path, size: int) -> None:
    """The training set (MVTec layout: train/good, a few test/good) and, apart, the labelled defects."""
    from .producers.synthetic import SyntheticCamera

    camera = SyntheticCamera(PRODUCT, size=size, seed=BELT_SEED)
    for folder in (data, defects):
        shutil.rmtree(folder, ignore_errors=True)  # a fit on exactly this run's images
    camera.write_mvtec(data, n_train=TRAIN_IMAGES, n_test_good=5, n_test_defect=0)
    camera.write_mvtec(defects, n_train=0, n_test_good=0, n_test_defect=LABELLED_DEFECTS)


def _model_summary(folder: Path) -> str:
    """What was fitted, from the model's manifest: engine, images, memory bank, threshold."""
    from .engines.manifest import Manifest

    manifest = Manifest.load(folder)
    return (f"{manifest.kind} on {manifest.training.get('n_images')} normal images, memory bank of "
            f"{manifest.extra.get('memory_bank_size')} patch features, threshold {manifest.thresholds.value:.3f} "
            f"({manifest.thresholds.method})")


def _produce_bad_frames(settings: Settings, line: str) -> int:
    """Two frames that must end as dead letters: a corrupt JPEG and a product with no model."""
    from .kafka import producer_client
    from .schemas import Frame, new_frame_id, topics

    producer = producer_client(settings.kafka)
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
    from .harness import LocalPipeline, wait_for
    from .kafka import count_messages, ensure_topics, read_topic
    from .schemas import Verdict, topics

    started = time.time()
    state = settings.state_dir
    lines = [f"line{i + 1}" for i in range(args.lines)]
    demo_dir = state / "demo"
    models = demo_dir / "models"

    print(f"[1/7] starting the local Kafka broker (state in {state})", flush=True)
    stack = LocalStack.from_settings(settings)
    we_started_kafka = stack.running("kafka") is None
    info = stack.up(with_s3=False)
    settings.kafka.bootstrap_servers = info["kafka_bootstrap"]
    ensure_topics(settings.kafka, lines)
    pipeline = LocalPipeline(settings.kafka, state, lines, group=GROUP, log_dir=state / "logs" / "demo",
                             model_dir=models)
    watched = pipeline.frame_topics() + pipeline.verdict_topics() + [topics.DEADLETTER]
    before = {t: count_messages(settings.kafka, t) for t in watched}

    def delta(names: list[str]) -> int:
        return sum(count_messages(settings.kafka, t) - before[t] for t in names)

    try:
        print(f"[2/7] writing a synthetic camera dataset ({TRAIN_IMAGES} normal images, {LABELLED_DEFECTS} "
              "defective ones to place the threshold) and fitting PatchCore", flush=True)
        data, defects = demo_dir / "data" / PRODUCT, demo_dir / "labelled-defects" / PRODUCT
        _write_datasets(data, defects, args.size)
        fit_started = time.monotonic()
        # The training images are PNGs, the cameras send JPEGs, which score a little higher: a threshold
        # from the normal images alone (their top score) would flag most good parts. A few labelled
        # defective images place it between normal and defective instead (F1-optimal).
        pipeline.run("train", ["train", "--model", "patchcore", "--data", str(data), "--out", str(models / PRODUCT),
                               "--name", PRODUCT, "--size", str(args.size), "--defects", str(defects / "test"),
                               "--option", f"coreset_ratio={CORESET_RATIO}", "--option", "progress=false"])
        print(f"      {_model_summary(models / PRODUCT)}; fitted in {time.monotonic() - fit_started:.0f}s: "
              f"{models / PRODUCT}", flush=True)

        print("[3/7] starting a processor worker and the ClickHouse and heatmap sinks; two broken frames "
              "to the dead-letter topic", flush=True)
        processor = pipeline.processor()
        sinks = [pipeline.sink("clickhouse"), pipeline.sink("heatmaps")]
        # Their dead letters also show the processor is up with the model loaded (a plant's runs for
        # weeks): the latency below is then the steady state's, not the start-up's.
        bad = _produce_bad_frames(settings, lines[0])
        wait_for(lambda: delta([topics.DEADLETTER]) >= bad, args.timeout, "the broken frames' dead letters",
                 watch=[processor])

        print(f"[4/7] streaming {args.frames} frames on each of {len(lines)} lines "
              f"({args.fps:g} fps, {100 * args.defect_rate:.0f}% defective)", flush=True)
        cameras = [pipeline.camera(line, f"{line}-cam1", args.frames, fps=args.fps, size=args.size,
                                   defect_rate=args.defect_rate, seed=BELT_SEED,
                                   first_index=FIRST_STREAMED_INDEX + i * args.frames)
                   for i, line in enumerate(lines)]
        sent = bad + pipeline.wait_producers(cameras, timeout_s=600)

        print("[5/7] waiting for every frame to get a verdict or a dead letter", flush=True)
        wait_for(lambda: delta(pipeline.verdict_topics() + [topics.DEADLETTER]) >= sent, args.timeout,
                 "a verdict or a dead letter for every frame", watch=[processor])

        print("[6/7] draining the sinks", flush=True)
        wait_for(pipeline.sinks_caught_up, args.timeout, "the sinks to commit every verdict and heatmap",
                 watch=sinks)
    finally:  # SIGTERM: the processor and the sinks finish their batch and commit
        pipeline.stop_all()

    print("[7/7] the run against the camera's ground truth", flush=True)
    started_ns = int(started * 1e9)
    frames = [f for f in _frames(read_topic(settings.kafka, pipeline.frame_topics())) if f.captured_at_ns >= started_ns]
    verdicts = [v for v in (Verdict.decode(r.value) for r in read_topic(settings.kafka, pipeline.verdict_topics()))
                if v.captured_at_ns >= started_ns]
    figures = score_run(frames, verdicts)
    print(_figures_table(figures))

    from .stores import open_store

    with open_store(settings) as store:
        stored = store.query(f"SELECT count() AS n FROM {store.database}.verdicts FINAL "
                             f"WHERE captured_at >= toDateTime64({started:.3f}, 3, 'UTC')")[0]["n"]
    heatmap_dir = settings.heatmap_dir
    heatmaps = sum(1 for p in heatmap_dir.rglob("*.png") if p.stat().st_mtime >= started) if heatmap_dir.exists() else 0
    n_verdicts, dead = delta(pipeline.verdict_topics()), delta([topics.DEADLETTER])
    print(f"rows in ClickHouse (deduplicated): {stored}, in {settings.chdb_path}")
    print(f"heatmaps: {heatmaps} overlays (one per flagged part) under {heatmap_dir}")
    print(f"logs: {pipeline.log_dir}; dead letters: {dead} on topic {topics.DEADLETTER}")
    print("dashboard on this data (then open http://127.0.0.1:8080/dashboard#key=demo):\n"
          f"  LINEGUARD_STATE_DIR={state} LINEGUARD_API__API_KEYS='[\"demo\"]' "
          f"lineguard serve --model-dir {models} --port 8080")
    if we_started_kafka and not args.keep_stack:
        stack.down()
    print(summary_line(figures, sent, n_verdicts, dead, heatmaps), flush=True)
    return 0 if n_verdicts + dead == sent and stored == n_verdicts else 1


def _frames(records: list[Record]) -> list[Frame]:
    """The frames among ``records``: the frame topics also hold the demo's broken frames."""
    from .schemas import Frame, SchemaError

    out = []
    for record in records:
        try:
            out.append(Frame.decode(record.value))
        except SchemaError:
            continue
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole platform locally with PatchCore, on the embedded defaults")
    p.add_argument("--lines", type=int, default=2, help="number of production lines (default 2)")
    p.add_argument("--frames", type=int, default=150, help="frames per line (default 150)")
    p.add_argument("--fps", type=float, default=5.0, help="frame rate per camera (default 5)")
    p.add_argument("--size", type=int, default=256, help="synthetic image size in pixels")
    p.add_argument("--defect-rate", type=float, default=0.15, help="share of parts the camera makes defective")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all verdicts")
    p.add_argument("--keep-stack", action="store_true", help="leave Kafka running afterwards")
    p.set_defaults(handler=run_demo)
