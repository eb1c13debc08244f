"""Replay and re-scoring on the real stack: dead-lettered frames scored once their model arrives, once only;
a time range re-scored with a new model version, one (the latest) ClickHouse row per frame.

Every component is a real ``lineguard`` process (processor, sink, replay, rescore) on the local Kafka
broker; ClickHouse is chdb. The processor starts with no model for the product, so every frame is
dead-lettered ``unknown_product``; then the model folder is copied in (the registry picks it up).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
import uuid

import pytest

from lineguard.config import KafkaConfig
from lineguard.engines.training import train
from lineguard.harness import LocalPipeline
from lineguard.kafka import count_messages, ensure_topics, producer_client
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import DeadLetter, Frame, topics
from lineguard.stores import ChdbStore, LocalFolderStore

from pipeline_helpers import read_topics, wait_for

pytestmark = [pytest.mark.kafka]
FRAMES = 24


def summary(output: str, prefix: str) -> dict[str, str]:
    """The fields of the last ``<prefix>: a=1 b=2`` line of a command's output."""
    line = [ln for ln in output.splitlines() if ln.startswith(prefix + ":")][-1]
    print(line)
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


class ReplayPipeline(LocalPipeline):
    def __init__(self, stack, root) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root = root
        self.models = root / "models"
        self.models.mkdir()
        super().__init__(KafkaConfig(bootstrap_servers=stack.kafka_bootstrap), root / "state", [f"rp{tag}"],
                         group=f"processors-{tag}", log_dir=root / "logs", model_dir=self.models,
                         LINEGUARD_SINKS__FLUSH_INTERVAL_MS="300", LINEGUARD_PROCESSOR__MODEL_POLL_S="0.5",
                         LINEGUARD_PROCESSOR__ARCHIVE="all")
        self.line = self.lines[0]

    def lineguard(self, name: str, *args: str) -> str:
        return self.run(name, list(args), timeout_s=300)

    def install_model(self, folder) -> None:
        """Copy a model folder in whole, then rename: the registry never sees half a model."""
        staging = self.models / f".staging-{uuid.uuid4().hex[:6]}"
        shutil.copytree(folder, staging)
        if (self.models / "washer").exists():
            shutil.rmtree(self.models / "washer")
        os.rename(staging, self.models / "washer")

    def my_letters(self) -> list[DeadLetter]:
        letters = read_topics(self.kafka, [topics.DEADLETTER], DeadLetter.decode, expect=0, timeout_s=10, settle_s=2)
        return [d for d in letters if d.source_topic == topics.frames(self.line)]

    def clickhouse(self, sql: str) -> list[dict]:
        store = ChdbStore(self.state_dir / "chdb")
        try:
            return store.query(sql, {"line": self.line})
        finally:
            store.close()

    def sink_clickhouse(self) -> str:
        comp = self.sink("clickhouse", until_idle=4)
        assert comp.wait(180) == 0, comp.output()[-3000:]
        return comp.output()


@pytest.fixture(scope="module")
def pipeline(stack, tmp_path_factory):
    p = ReplayPipeline(stack, tmp_path_factory.mktemp("replay"))
    data = p.root / "data"
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(data, n_train=30, n_test_good=2, n_test_defect=2)
    train("baseline", data, p.root / "v1" / "washer", name="washer", version="v1")
    train("baseline", data, p.root / "v2" / "washer", name="washer", version="v2")
    ensure_topics(p.kafka, p.lines)
    p.worker = p.processor()
    yield p
    p.stop_all()


def _truncated_letter(p: ReplayPipeline) -> None:
    """A dead letter whose frame was cut at deadletter_max_raw_bytes: counted, never injected."""
    frame = Frame(frame_id=uuid.uuid4().hex, line_id=p.line, camera_id="cam-big", product="washer",
                  captured_at_ns=time.time_ns(), seq=0, encoding="jpeg", image=bytes(5000))
    letter = DeadLetter.build(source_topic=topics.frames(p.line), partition=0, offset=10**9, reason="unknown_product",
                              error="test", raw=frame.encode(), max_raw_bytes=1000, failed_at_ns=time.time_ns(),
                              component="test", frame_id=frame.frame_id, line_id=p.line)
    producer = producer_client(p.kafka)
    producer.produce(topics.DEADLETTER, value=letter.encode())
    assert producer.flush(30) == 0


def test_dead_lettered_frames_are_scored_once_after_the_model_arrives_and_rescore_keeps_the_latest(pipeline):
    p = pipeline
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    assert p.wait_producers([p.camera(p.line, "cam-0", FRAMES, size=128, defect_rate=0.3, seed=3)]) == FRAMES
    wait_for(lambda: len(p.my_letters()) >= FRAMES, 120, "unknown_product dead letters", watch=[p.worker])
    letters = p.my_letters()
    assert {d.reason for d in letters} == {"unknown_product"} and len(letters) == FRAMES
    assert count_messages(p.kafka, topics.verdicts(p.line)) == 0
    _truncated_letter(p)

    # The model arrives; the dead letters are replayed: each frame scored once, one row each.
    p.install_model(p.root / "v1" / "washer")
    dry = summary(p.lineguard("replay-dry", "replay", "--deadletter", "--reason", "unknown_product",
                              "--line", p.line, "--dry-run"), "replay")
    assert dry["replayed"] == "0" and dry["would_replay"] == str(FRAMES)
    first = summary(p.lineguard("replay", "replay", "--deadletter", "--reason", "unknown_product",
                                "--line", p.line), "replay")
    assert first["replayed"] == str(FRAMES) and first["skipped_truncated"] == "1", first
    wait_for(lambda: count_messages(p.kafka, topics.verdicts(p.line)) >= FRAMES, 120, "verdicts of the replayed frames",
             watch=[p.worker])
    second = summary(p.lineguard("replay-again", "replay", "--deadletter", "--reason", "unknown_product",
                                 "--line", p.line), "replay")
    assert second["replayed"] == "0" and second["already_replayed"] == str(FRAMES), second
    time.sleep(3)  # nothing more arrives: the second run injected nothing
    assert count_messages(p.kafka, topics.verdicts(p.line)) == FRAMES
    assert re.search(rf"written={FRAMES} deadletter=0", p.sink_clickhouse())
    (row,) = p.clickhouse("SELECT count() AS n, uniqExact(frame_id) AS frames, any(model_version) AS version "
                          "FROM lineguard.verdicts WHERE line_id = {line:String}")
    print(f"replayed: rows={row['n']} frames={row['frames']} model={row['version']}")
    assert row["n"] == FRAMES and row["frames"] == FRAMES and row["version"] == "v1"
    (before,) = p.clickhouse("SELECT max(scored_at_ns) AS last FROM lineguard.verdicts WHERE line_id = {line:String}")

    # Re-score the range with v2: the frames topic holds each frame twice (first pass and replay), scored once.
    until = dt.datetime.now(dt.timezone.utc).isoformat()
    out = p.lineguard("rescore", "rescore", "--line", p.line, "--since", started.isoformat(), "--until", until,
                      "--model", "v2", "--model-dir", str(p.root / "v2"))
    fields = summary(out, "rescore")
    assert fields["frames"] == str(FRAMES) and fields["scored"] == str(FRAMES) and fields["failed"] == "0", fields
    assert fields["duplicates"] == str(FRAMES) and fields["models"] == "washer:v2"
    p.sink_clickhouse()
    (latest,) = p.clickhouse("SELECT count() AS n, uniqExact(frame_id) AS frames, countIf(model_version = 'v2') AS v2, "
                             "min(scored_at_ns) AS first FROM lineguard.verdicts_latest WHERE line_id = {line:String}")
    (stored,) = p.clickhouse("SELECT count() AS n FROM lineguard.verdicts FINAL WHERE line_id = {line:String}")
    print(f"rescored: latest_rows={latest['n']} frames={latest['frames']} v2={latest['v2']} final_rows={stored['n']}")
    assert latest["n"] == latest["frames"] == latest["v2"] == FRAMES
    assert int(latest["first"]) > int(before["last"])
    assert stored["n"] == FRAMES


def test_archived_frames_export_as_an_mvtec_folder(pipeline, tmp_path):
    """Runs after the replay test: the replayed frames were archived (processor.archive=all) through the
    heatmap topic; the heatmap sink stores them; the export classes them by verdict, or by label."""
    p = pipeline
    comp = p.sink("heatmaps", until_idle=4)
    assert comp.wait(180) == 0, comp.output()[-3000:]
    archived = LocalFolderStore(p.state_dir / "heatmaps").keys(f"{p.line}/archive/")
    print(f"archive: objects={len(archived)}")
    assert len(archived) == FRAMES and all(key.endswith(".jpg") for key in archived)

    out = p.root / "dataset"
    fields = summary(p.lineguard("export", "dataset", "export", "--line", p.line, "--out", str(out)), "dataset")
    assert fields["exported"] == str(FRAMES) and fields["not_archived"] == "0", fields
    (row,) = p.clickhouse("SELECT countIf(is_defective) AS defective FROM lineguard.verdicts_latest "
                          "WHERE line_id = {line:String}")
    files = sorted(out.glob("washer/*/*/*.jpg"))
    assert len(files) == FRAMES
    assert len(list(out.glob("washer/test/defective/*.jpg"))) == int(row["defective"])
    assert len(list(out.glob("washer/train/good/*.jpg"))) == FRAMES - int(row["defective"])

    good = summary(p.lineguard("export-good", "dataset", "export", "--line", p.line, "--outcome", "good",
                               "--out", str(tmp_path / "good")), "dataset")
    assert good["exported"] == str(FRAMES - int(row["defective"]))


def test_export_by_operator_label(pipeline, tmp_path):
    """A defective verdict an operator labelled false_alarm is exported as a good part (labels_latest)."""
    p = pipeline
    store = ChdbStore(p.state_dir / "chdb")
    try:
        (row,) = store.query("SELECT toString(frame_id) AS frame_id, camera_id, product, model_version "
                             "FROM lineguard.verdicts_latest WHERE line_id = {line:String} AND is_defective "
                             "ORDER BY frame_id LIMIT 1", {"line": p.line})
        store.insert_rows("labels", ["frame_id", "line_id", "camera_id", "product", "model_version", "label",
                                     "labelled_at_ns", "operator", "note", "schema_version"],
                          [[row["frame_id"], p.line, row["camera_id"], row["product"], row["model_version"],
                            "false_alarm", time.time_ns(), "test", None, 1]])
    finally:
        store.close()
    out = tmp_path / "false-alarms"
    fields = summary(p.lineguard("export-labels", "dataset", "export", "--line", p.line, "--label", "false_alarm",
                                 "--out", str(out)), "dataset")
    assert fields["exported"] == "1"
    (only,) = out.glob("washer/*/*/*.jpg")
    assert only.parent.relative_to(out).as_posix() == "washer/train/good"
    assert only.stem == row["frame_id"].replace("-", "")
