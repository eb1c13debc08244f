"""A demo dataset made by the REAL pipeline once per test session, for the analytics, MES, dashboard
and Grafana tests (imported by their modules; built on first use, then shared).

What runs: two baseline models are fitted (washer, nut); a real ``lineguard process``
worker scores frames from the real Kafka broker; ``lineguard sink clickhouse`` writes
the verdicts to chdb, ``lineguard sink heatmaps`` the overlays to the S3 server. The
frames come from two producers: a Python producer that back-dates ``captured_at`` over
the last nine days (so there are hours, days, shifts and a week to aggregate; the
processor does not care when a frame was taken) and one real ``lineguard produce``
run at the current time. Along the way:

* a **model change**: the washer model is refitted as version ``v2`` between the two
  phases (frames captured from ``model_change_at`` on); the processor hot-reloads it.
  The v1 folder is kept in ``model_archive``, as a plant keeps its released models;
* a **process change**: from ``process_change_at`` on, camera ``cam-b2`` images are a
  little brighter, so its normal parts score higher (drift);
* a **replay**: frames already scored are sent again (at-least-once), so the verdict
  topics hold duplicates -- some scored by another model version than the first time --
  and the second ClickHouse sink run inserts them as new rows.

Nothing here computes an expected figure: the tests do that from ``verdicts``, the
messages read back from the verdict topics.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lineguard.config import KafkaConfig
from lineguard.engines.training import train
from lineguard.kafka import count_messages, ensure_topics, producer_client
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import Frame, Verdict, new_frame_id, topics
from lineguard.schemas import image as imagecodec

from pipeline_helpers import Component, component_env, read_topics, wait_for

SIZE = 128  # the baseline's input size: no resizing, quick scoring
UTC = dt.timezone.utc
PER_CAMERA_PHASE = 36  # frames per camera and phase
CLI_FRAMES = 16
REPLAYED = 24
BRIGHTER = 2  # grey levels added to cam-b2 after the process change: a subtle drift
DATA_SEED = 1  # the cameras share the training data's belt (seed); each has its own frame indices


@dataclass(frozen=True)
class CameraSpec:
    line: str
    camera: str
    product: str
    first_index: int  # of the synthetic camera's frames, clear of the training images


@dataclass
class Dataset:
    root: Path
    lines: list[str]
    models: Path
    model_archive: Path   # earlier model versions (washer v1)
    chdb_path: Path       # written by the sink; never opened by a test (tests open copies)
    heatmap_bucket: str
    env: dict[str, str]   # lineguard component environment (Kafka, state dir)
    s3_env: dict[str, str]
    kafka: KafkaConfig
    verdicts: list[Verdict]        # every verdict message, duplicates included
    frames_sent: int               # distinct frames
    replayed_ids: set[str]
    model_change_at: dt.datetime   # frames captured from here on were scored by washer v2
    process_change_at: dt.datetime  # cam-b2 brighter from here on
    started_at: dt.datetime        # earliest capture time
    cameras: list[CameraSpec] = field(default_factory=list)

    def latest(self) -> dict[str, Verdict]:
        """Each frame's latest verdict (highest scored_at): what ReplacingMergeTree keeps."""
        out: dict[str, Verdict] = {}
        for v in self.verdicts:
            if v.frame_id not in out or v.scored_at_ns > out[v.frame_id].scored_at_ns:
                out[v.frame_id] = v
        return out

    def copy_chdb(self, dest: Path) -> Path:
        """A private copy of the ClickHouse data, so each user may open it in its own process."""
        # ClickHouse links metadata/<db> and data/<db>/<table> into store/ (relative links): keep them links.
        shutil.copytree(self.chdb_path, dest, symlinks=True)
        return dest


_BUILT: dict[int, Dataset] = {}


def get_dataset(stack, tmp_path_factory) -> Dataset:  # noqa: ANN001 - pytest fixtures
    """The session's dataset, built on the first call."""
    key = id(stack)
    if key not in _BUILT:
        _BUILT[key] = _build(stack, tmp_path_factory.mktemp("analytics-dataset"))
    return _BUILT[key]


def _frames(spec: CameraSpec, start_seq: int, times_ns: list[int], brighten_from_ns: int | None = None) -> list[Frame]:
    camera = SyntheticCamera(spec.product, size=SIZE, seed=DATA_SEED, defect_rate=0.15)
    frames = []
    for i, captured in enumerate(times_ns):
        image = camera.render(spec.first_index + start_seq + i).image
        if brighten_from_ns is not None and captured >= brighten_from_ns:
            image = np.clip(image.astype(np.int16) + BRIGHTER, 0, 255).astype(np.uint8)
        data, _, _ = imagecodec.encode(image, "jpeg", quality=92)
        frames.append(Frame(frame_id=new_frame_id(), line_id=spec.line, camera_id=spec.camera,
                            product=spec.product, captured_at_ns=captured, seq=start_seq + i,
                            encoding="jpeg", image=data))
    return frames


def _send(kafka: KafkaConfig, frames: list[Frame]) -> None:
    producer = producer_client(kafka)
    for frame in frames:
        producer.produce(topics.frames(frame.line_id), key=frame.camera_id.encode(), value=frame.encode())
    assert producer.flush(60) == 0, "frames not delivered"


def _build(stack, root: Path) -> Dataset:  # noqa: ANN001
    tag = uuid.uuid4().hex[:6]
    lines = [f"an{tag}-a", f"an{tag}-b"]
    state, models = root / "state", root / "models"
    kafka = KafkaConfig(bootstrap_servers=stack.kafka_bootstrap)
    env = component_env(stack.kafka_bootstrap, state,
                        LINEGUARD_PROCESSOR__CONSUMER_GROUP=f"analytics-{tag}",
                        LINEGUARD_PROCESSOR__MODEL_POLL_S="0.3",
                        LINEGUARD_SINKS__FLUSH_INTERVAL_MS="300")
    bucket = f"heatmaps-{tag}"
    s3_env = {**env,
              "LINEGUARD_SINKS__OBJECT_STORE__BACKEND": "s3",
              "LINEGUARD_SINKS__OBJECT_STORE__ENDPOINT": stack.s3_endpoint,
              "LINEGUARD_SINKS__OBJECT_STORE__ACCESS_KEY": stack.s3_access_key,
              "LINEGUARD_SINKS__OBJECT_STORE__SECRET_KEY": stack.s3_secret_key,
              "LINEGUARD_SINKS__OBJECT_STORE__BUCKET": bucket}
    cameras = [CameraSpec(lines[0], "cam-a1", "washer", 5000), CameraSpec(lines[0], "cam-a2", "nut", 6000),
               CameraSpec(lines[1], "cam-b1", "washer", 7000), CameraSpec(lines[1], "cam-b2", "washer", 8000)]

    for product in ("washer", "nut"):
        data = root / "data" / product
        SyntheticCamera(product, size=SIZE, seed=DATA_SEED).write_mvtec(data, n_train=60, n_test_good=2, n_test_defect=2)
        train("baseline", data, models / product, name=product, version="v1")
    ensure_topics(kafka, lines)

    now = dt.datetime.now(UTC).replace(microsecond=0)
    started_at = now - dt.timedelta(days=9)
    model_change_at = now - dt.timedelta(days=3, hours=5)
    process_change_at = now - dt.timedelta(days=1, hours=7)
    rng = random.Random(5)

    def spread(lo: dt.datetime, hi: dt.datetime) -> list[int]:
        lo_ns, hi_ns = int(lo.timestamp() * 1e9), int(hi.timestamp() * 1e9)
        return sorted(rng.randrange(lo_ns, hi_ns) for _ in range(PER_CAMERA_PHASE))

    components: list[Component] = []

    def start(name: str, args: list[str], comp_env: dict[str, str] | None = None) -> Component:
        comp = Component(args, comp_env or env, root / f"{name}-{len(components)}.log")
        components.append(comp)
        return comp

    def verdict_count() -> int:
        return sum(count_messages(kafka, topics.verdicts(line)) for line in lines)

    def run_to_end(name: str, args: list[str], comp_env: dict[str, str] | None = None) -> str:
        comp = start(name, args, comp_env)
        assert comp.wait(180) == 0, comp.output()[-3000:]
        return comp.output()

    try:
        processor = start("processor", ["process", "--lines", ",".join(lines), "--model-dir", str(models)])
        # Phase 1: model v1 everywhere, nine to three days ago.
        phase1 = [f for spec in cameras for f in _frames(spec, 0, spread(started_at, model_change_at))]
        _send(kafka, phase1)
        wait_for(lambda: verdict_count() >= len(phase1), 120, "phase-1 verdicts")

        # Model change: washer v2 (refitted on another calibration split), hot-reloaded.
        shutil.copytree(models / "washer", root / "model-archive" / "washer-v1")
        train("baseline", root / "data" / "washer", models / "washer", name="washer", version="v2", seed=3)
        time.sleep(1.0)  # > model_poll_s: the next batch loads v2

        # Phase 2, with the process change on cam-b2, up to an hour ago.
        brighten_ns = int(process_change_at.timestamp() * 1e9)
        phase2 = [f for spec in cameras
                  for f in _frames(spec, PER_CAMERA_PHASE, spread(model_change_at, now - dt.timedelta(hours=1)),
                                   brighten_from_ns=brighten_ns if spec.camera == "cam-b2" else None)]
        _send(kafka, phase2)
        # And a real camera producer process, capturing now: a new camera on another belt
        # (seed), which the model has never seen -- the week's worst camera.
        out = run_to_end("produce", ["produce", "--line", lines[0], "--camera", "cam-a3", "--product", "washer",
                                     "--source", "synthetic", "--count", str(CLI_FRAMES), "--size", str(SIZE),
                                     "--defect-rate", "0.3", "--seed", "21"])
        assert f"delivered={CLI_FRAMES} failed=0" in out, out[-2000:]
        distinct = len(phase1) + len(phase2) + CLI_FRAMES
        wait_for(lambda: verdict_count() >= distinct, 120, "phase-2 verdicts")
        out = run_to_end("sink-clickhouse", ["sink", "clickhouse", "--lines", ",".join(lines), "--until-idle", "2"])
        assert f"written={distinct} deadletter=0" in out, out[-2000:]

        # Replay: phase-1 frames sent again; washer ones are now scored by v2.
        replay = rng.sample(phase1, REPLAYED)
        _send(kafka, replay)
        wait_for(lambda: verdict_count() >= distinct + REPLAYED, 120, "replayed verdicts")
        # The second ClickHouse run and the heatmap sink side by side (they share nothing).
        sinks = [start("sink-clickhouse", ["sink", "clickhouse", "--lines", ",".join(lines), "--until-idle", "2"]),
                 start("sink-heatmaps", ["sink", "heatmaps", "--lines", ",".join(lines), "--until-idle", "2"], s3_env)]
        for sink in sinks:
            assert sink.wait(180) == 0, sink.output()[-3000:]
        assert f"written={REPLAYED} deadletter=0" in sinks[0].output(), sinks[0].output()[-2000:]
        assert processor.alive(), processor.output()[-3000:]
    finally:
        for comp in components:
            comp.stop()

    verdicts = read_topics(kafka, [topics.verdicts(line) for line in lines], Verdict.decode,
                           expect=distinct + REPLAYED, timeout_s=60, settle_s=1.0)
    assert len(verdicts) == distinct + REPLAYED, f"{len(verdicts)} verdicts for {distinct} + {REPLAYED} replays"
    return Dataset(root=root, lines=lines, models=models, model_archive=root / "model-archive", chdb_path=state / "chdb", heatmap_bucket=bucket,
                   env=env, s3_env=s3_env, kafka=kafka, verdicts=verdicts, frames_sent=distinct,
                   replayed_ids={f.frame_id for f in replay}, model_change_at=model_change_at,
                   process_change_at=process_change_at, started_at=started_at,
                   cameras=cameras)
