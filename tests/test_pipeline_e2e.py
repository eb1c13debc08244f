"""End to end on the real stack: producers -> Kafka -> faust processor -> verdict topics -> ClickHouse + S3.

Every component is a real ``lineguard`` process; Kafka is the local broker,
S3 is the versitygw server, ClickHouse is the chdb engine. Nothing is mocked.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter, defaultdict

import msgpack
import numpy as np
import pytest
from minio import Minio

from lineguard.config import KafkaConfig
from lineguard.engines.training import train
from lineguard.harness import LocalPipeline
from lineguard.kafka import count_messages, ensure_topics, producer_client
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import DeadLetter, Frame, Verdict, new_frame_id, topics
from lineguard.schemas import image as imagecodec
from lineguard.stores import ChdbStore

from pipeline_helpers import read_topics, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
FRAMES_PER_LINE = 200
MAX_IMAGE_BYTES = 2_000_000


class Pipeline(LocalPipeline):
    """The local-pipeline harness on two lines of this module's own, heatmaps to a bucket of its own."""

    def __init__(self, stack, root) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root = root
        self.state = root / "state"
        self.models = root / "models"
        self.bucket = f"heatmaps-{tag}"
        self.stack = stack
        super().__init__(KafkaConfig(bootstrap_servers=stack.kafka_bootstrap), self.state,
                         [f"e2e{tag}-a", f"e2e{tag}-b"], group=f"processors-{tag}", log_dir=root,
                         model_dir=self.models,
                         LINEGUARD_LIMITS__MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
                         LINEGUARD_SINKS__FLUSH_INTERVAL_MS="300")
        self.s3_env = {
            "LINEGUARD_SINKS__OBJECT_STORE__BACKEND": "s3",
            "LINEGUARD_SINKS__OBJECT_STORE__ENDPOINT": stack.s3_endpoint,
            "LINEGUARD_SINKS__OBJECT_STORE__ACCESS_KEY": stack.s3_access_key,
            "LINEGUARD_SINKS__OBJECT_STORE__SECRET_KEY": stack.s3_secret_key,
            "LINEGUARD_SINKS__OBJECT_STORE__BUCKET": self.bucket,
        }
        self.sent: Counter[str] = Counter()  # frames sent per line

    def count_verdicts(self) -> int:
        return self.count(self.verdict_topics())

    def my_dead_letters(self, expect: int) -> list[DeadLetter]:
        mine = set(self.frame_topics())
        letters = read_topics(self.kafka, [topics.DEADLETTER], DeadLetter.decode, expect=0, timeout_s=20, settle_s=3)
        return [d for d in letters if d.source_topic in mine]

    def run_sink(self, kind: str, **env: str) -> str:
        comp = self.sink(kind, until_idle=4, **env)
        assert comp.wait(180) == 0, comp.output()[-3000:]
        return comp.output()

    def rows_in_clickhouse(self) -> int:
        store = ChdbStore(self.state / "chdb")
        try:
            return store.count_frames()
        finally:
            store.close()


@pytest.fixture(scope="module")
def pipeline(stack, tmp_path_factory):
    p = Pipeline(stack, tmp_path_factory.mktemp("e2e"))
    data = p.root / "data"
    SyntheticCamera(product="washer", size=256, seed=1).write_mvtec(data, n_train=40, n_test_good=2, n_test_defect=2)
    train("baseline", data, p.models / "washer", name="washer", version="e2e")
    ensure_topics(p.kafka, p.lines)
    p.worker = p.processor()
    yield p
    p.stop_all()


def test_two_lines_400_frames_give_400_verdicts_rows_and_heatmaps(pipeline):
    p = pipeline
    producers = [p.camera(line, f"cam-{i}", FRAMES_PER_LINE, size=256, defect_rate=0.2, seed=10 + i)
                 for i, line in enumerate(p.lines)]
    for line, prod in zip(p.lines, producers):
        assert prod.wait(180) == 0, prod.output()[-2000:]
        assert f"delivered={FRAMES_PER_LINE} failed=0" in prod.output()
        p.sent[line] += FRAMES_PER_LINE

    wait_for(lambda: p.count_verdicts() >= 2 * FRAMES_PER_LINE, 180, "400 verdicts")
    verdicts = read_topics(p.kafka, p.verdict_topics(), Verdict.decode, expect=2 * FRAMES_PER_LINE)
    assert len(verdicts) == 2 * FRAMES_PER_LINE
    assert len({v.frame_id for v in verdicts}) == 2 * FRAMES_PER_LINE
    assert Counter(v.line_id for v in verdicts) == {line: FRAMES_PER_LINE for line in p.lines}
    # Per camera, verdicts come out in capture order (the camera is the message key).
    per_camera = defaultdict(list)
    for v in verdicts:
        per_camera[v.camera_id].append(v.seq)
    assert all(seqs == sorted(seqs) for seqs in per_camera.values())
    defective = [v for v in verdicts if v.is_defective]
    assert 0 < len(defective) < len(verdicts)
    assert all(v.heatmap_key for v in defective) and not any(v.heatmap_key for v in verdicts if not v.is_defective)

    out = p.run_sink("clickhouse")
    assert re.search(r"written=400 deadletter=0", out), out[-2000:]
    assert p.rows_in_clickhouse() == 2 * FRAMES_PER_LINE

    p.run_sink("heatmaps", **p.s3_env)
    client = Minio(p.stack.s3_endpoint, access_key=p.stack.s3_access_key, secret_key=p.stack.s3_secret_key, secure=False)
    stored = {obj.object_name for obj in client.list_objects(p.bucket, recursive=True)}
    assert {v.heatmap_key for v in defective} <= stored
    head = client.stat_object(p.bucket, defective[0].heatmap_key)
    assert head.content_type == "image/png" and head.size > 1000


def _bad_messages(line: str) -> dict[str, bytes]:
    def frame(**kw) -> Frame:
        base = dict(frame_id=new_frame_id(), line_id=line, camera_id="cam-bad", product="washer",
                    captured_at_ns=time.time_ns(), seq=0, encoding="jpeg", image=b"")
        base.update(kw)
        return Frame(**base)

    good_jpeg, _, _ = imagecodec.encode(np.full((256, 256, 3), 128, np.uint8), "jpeg")
    noise = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    big_png, _, _ = imagecodec.encode(noise, "png")
    assert len(big_png) > MAX_IMAGE_BYTES
    future = frame(image=good_jpeg).to_dict()
    future["schema_version"] = 99
    return {
        "undecodable_image": frame(image=good_jpeg[: len(good_jpeg) // 2]).encode(),
        "malformed": frame(image=good_jpeg).encode()[:-50],
        "unsupported_version": msgpack.packb(future, use_bin_type=True),
        "oversize": frame(encoding="png", image=big_png).encode(),
        "unknown_product": frame(image=good_jpeg, product="no-such-part").encode(),
        "image_too_large": frame(encoding="raw", dtype="uint8", shape=[9000, 2], image=bytes(18000)).encode(),
    }


def test_bad_input_goes_to_dead_letters_and_the_processor_keeps_running(pipeline):
    p = pipeline
    line = p.lines[0]
    before = count_messages(p.kafka, topics.verdicts(line))
    producer = producer_client(p.kafka)
    bad = _bad_messages(line)
    for payload in bad.values():
        producer.produce(topics.frames(line), key=b"cam-bad", value=payload)
    good_jpeg, _, _ = imagecodec.encode(SyntheticCamera(size=256, seed=5, defect_rate=0).render(0).image, "jpeg")
    for i in range(5):
        ok = Frame(frame_id=new_frame_id(), line_id=line, camera_id="cam-after", product="washer",
                   captured_at_ns=time.time_ns(), seq=i, encoding="jpeg", image=good_jpeg)
        producer.produce(topics.frames(line), key=b"cam-after", value=ok.encode())
    assert producer.flush(30) == 0
    p.sent[line] += len(bad) + 5

    wait_for(lambda: count_messages(p.kafka, topics.verdicts(line)) >= before + 5, 120, "verdicts after bad input")
    letters = p.my_dead_letters(expect=len(bad))
    assert sorted(d.reason for d in letters) == sorted(bad)
    assert all(d.source_topic == topics.frames(line) and d.error for d in letters)
    assert p.worker.alive()
    verdicts = sum(count_messages(p.kafka, topics.verdicts(l)) for l in p.lines)
    assert verdicts + len(letters) == sum(p.sent.values())


def test_replay_from_offset_zero_keeps_one_row_per_frame(pipeline):
    p = pipeline
    frames_with_verdicts = p.count_verdicts()
    replay = p.start("replay", ["process", "--lines", ",".join(p.lines), "--model-dir", str(p.models),
                                "--group", f"replay-{uuid.uuid4().hex[:6]}"])
    wait_for(lambda: p.count_verdicts() >= 2 * frames_with_verdicts, 240, "the replayed verdicts")
    replay.stop()
    verdicts = read_topics(p.kafka, p.verdict_topics(), Verdict.decode, expect=2 * frames_with_verdicts)
    unique = {v.frame_id for v in verdicts}
    assert len(verdicts) == 2 * len(unique)  # every frame scored twice...
    p.run_sink("clickhouse")
    assert p.rows_in_clickhouse() == len(unique)  # ...and still one row per frame
