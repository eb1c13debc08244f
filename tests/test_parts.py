"""One decision per part: the assembler's rules (no Kafka), then two cameras on the real broker.

The real-broker test runs every component as a process: frames with ``part_id`` -> processor ->
verdicts -> ``lineguard parts`` -> ``lineguard.parts.<line>`` -> ``lineguard sink parts`` -> ClickHouse.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from lineguard.config import KafkaConfig, LineConfig, PlantConfig
from lineguard.schemas import PartVerdict, Verdict, new_frame_id

MS = 1_000_000


def _verdict(part_id: str | None, camera: str, captured_ns: int, score: float = 0.2, late: bool | None = None,
             scored_ns: int | None = None, meta: dict | None = None) -> Verdict:
    return Verdict(frame_id=new_frame_id(), line_id="press1", camera_id=camera, product="washer", seq=0,
                   captured_at_ns=captured_ns, scored_at_ns=scored_ns or captured_ns + 5 * MS, model_name="m",
                   model_version="1", score=score, threshold=0.5, is_defective=score > 0.5, heatmap_key=None,
                   queue_wait_ms=0.0, inference_ms=1.0, processor_id="p", part_id=part_id, meta=meta, late=late)


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def _assembler(clock: Clock, **line: object):
    from lineguard.processors.parts import PartAssembler

    config = {"part_views": ["top", "side"], "part_deadline_ms": 1000, "verdict_deadline_ms": 1500, **line}
    return PartAssembler(PlantConfig(lines={"press1": LineConfig(**config)}), "press1", clock=clock)


def test_a_part_is_decided_once_every_expected_view_is_in():
    clock = Clock(10_000 * MS)
    parts = _assembler(clock)
    assert parts.add(_verdict("p1", "top", 10_000 * MS, meta={"serial": "SN1"}), 0, 5) == []
    assert parts.open_offsets() == {0: 5}  # the top view holds its offset until the part is published
    (decision,) = parts.add(_verdict("p1", "side", 10_010 * MS, score=0.9), 1, 7)
    part = decision.part
    assert (part.reason, part.is_defective, part.missing_views, part.late) == ("complete", True, [], False)
    assert [v["camera_id"] for v in part.views] == ["top", "side"] and part.worst_camera_id == "side"
    assert part.worst_score_ratio == pytest.approx(0.9 / 0.5) and part.meta == {"serial": "SN1"}
    assert sorted(decision.positions) == [(0, 5), (1, 7)] and parts.open_offsets() == {}
    assert PartVerdict.decode(part.encode()) == part  # and it is a valid message


@pytest.mark.parametrize("policy, defective", [("reject", True), ("pass", False)])
def test_a_part_missing_a_view_is_decided_at_its_deadline_and_names_it(policy, defective):
    clock = Clock(10_000 * MS)
    parts = _assembler(clock, missing_view_decision=policy)
    parts.add(_verdict("p1", "top", 10_000 * MS), 0, 1)
    parts.set_caught_up(0, True)
    clock.now_ns = 10_999 * MS
    assert parts.expire() == []
    clock.now_ns = 11_000 * MS
    (decision,) = parts.expire()
    assert decision.part.reason == "deadline" and decision.part.missing_views == ["side"]
    assert decision.part.is_defective is defective
    # decided at the part deadline, before the verdict deadline: a reject gate can still act on it
    assert decision.part.deadline_at_ns == 11_500 * MS and decision.part.late is False


def test_without_a_verdict_deadline_a_part_has_none_and_is_never_late():
    clock = Clock(10_000 * MS)
    parts = _assembler(clock, verdict_deadline_ms=None)
    parts.add(_verdict("p1", "top", 10_000 * MS), 0, 1)
    parts.set_caught_up(0, True)
    clock.now_ns = 99_000 * MS
    (decision,) = parts.expire()
    assert decision.part.deadline_at_ns is None and decision.part.late is False


def test_the_part_deadline_must_come_before_the_verdict_deadline():
    with pytest.raises(ValueError, match="part_deadline_ms"):
        LineConfig(part_views=["top"], part_deadline_ms=2000, verdict_deadline_ms=1500)


def test_a_backlog_does_not_cut_parts_whose_views_are_still_unread():
    """Wall time is past the deadline, but partition 1 has not been read up to it: the part waits."""
    clock = Clock(50_000 * MS)
    parts = _assembler(clock)
    parts.add(_verdict("p1", "top", 10_000 * MS), 0, 1)
    parts.set_caught_up(0, True)
    parts.set_caught_up(1, False)
    assert parts.expire() == []  # side's partition is behind: its view may still come
    (decision,) = parts.add(_verdict("p1", "side", 10_020 * MS), 1, 3)
    assert decision.part.reason == "complete"
    assert decision.part.late is True  # decided long after its deadline: a gate must not act on it


def test_a_frame_without_part_id_is_its_own_part_and_views_after_a_decision_are_ignored():
    clock = Clock(10_000 * MS)
    parts = _assembler(clock)
    (alone,) = parts.add(_verdict(None, "top", 10_000 * MS, late=True), 0, 1)
    assert alone.part.part_id == alone.part.views[0]["frame_id"] and alone.part.expected_views == ["top"]
    assert alone.part.late is True  # a late view makes a late part
    parts.add(_verdict("p2", "top", 10_000 * MS), 0, 2)
    parts.add(_verdict("p2", "side", 10_000 * MS), 1, 3)
    assert parts.add(_verdict("p2", "side", 10_000 * MS), 1, 4) == []  # a replayed view of a decided part
    assert parts.views_after_decision == 1 and parts.open_offsets() == {}


def test_a_re_scored_view_replaces_its_replay():
    clock = Clock(10_000 * MS)
    parts = _assembler(clock, part_views=["top", "side", "bottom"])
    parts.add(_verdict("p1", "top", 10_000 * MS, score=0.9, scored_ns=10_005 * MS), 0, 1)
    parts.add(_verdict("p1", "top", 10_000 * MS, score=0.1, scored_ns=10_050 * MS), 0, 2)
    parts.add(_verdict("p1", "side", 10_000 * MS), 1, 1)
    (decision,) = parts.add(_verdict("p1", "bottom", 10_000 * MS), 1, 2)
    assert decision.part.is_defective is False and len(decision.part.views) == 3


def test_the_processor_flags_late_verdicts_and_carries_part_id_and_bounded_meta(tmp_path):
    """A verdict scored past the line's deadline after capture says late; meta and part_id travel, bounded."""
    import dataclasses

    import numpy as np

    from lineguard.config import ProcessorConfig
    from lineguard.inspection import ModelRegistry
    from lineguard.processors.scoring import BatchScorer, Work
    from lineguard.schemas import ImageLimits
    from lineguard.schemas.messages import VERDICT_META_CHARS, VERDICT_META_ITEMS
    from test_processor_core import _frame, _normal, _save_baseline

    rng = np.random.default_rng(3)
    _save_baseline(tmp_path / "widget", rng)
    plant = PlantConfig(lines={"line1": LineConfig(verdict_deadline_ms=500)})
    scorer = BatchScorer(ProcessorConfig(model_dir=tmp_path), ImageLimits(), ModelRegistry(tmp_path), plant=plant)
    meta = {f"k{i:02d}": "x" * 1000 for i in range(40)}
    fresh = dataclasses.replace(_frame(_normal(rng)), part_id="P-1", meta=meta)
    stale = dataclasses.replace(_frame(_normal(rng)), captured_at_ns=time.time_ns() - 2_000 * MS)
    on_time, late = (o.verdict for o in scorer.score([Work(fresh, time.time_ns()), Work(stale, time.time_ns())]))
    assert (on_time.late, late.late) == (False, True)
    assert on_time.part_id == "P-1" and late.part_id is None
    assert len(on_time.meta) == VERDICT_META_ITEMS and all(len(v) == VERDICT_META_CHARS for v in on_time.meta.values())
    assert Verdict.decode(on_time.encode()) == on_time
    # a line without a deadline leaves late unset (older consumers: the field is simply absent)
    other = BatchScorer(ProcessorConfig(model_dir=tmp_path), ImageLimits(), ModelRegistry(tmp_path))
    assert other.score([Work(stale, time.time_ns())])[0].verdict.late is None


def test_the_added_verdict_fields_are_compatible_both_ways():
    """A verdict from before part_id/meta/late decodes (they are None); a consumer that knows only the
    older fields still reads a new verdict (unknown keys are ignored by design)."""
    import msgpack

    new = _verdict("P-9", "top", 10_000 * MS, late=True, meta={"serial": "SN9"})
    old_doc = {k: v for k, v in new.to_dict().items() if k not in ("part_id", "meta", "late")}
    old = Verdict.decode(msgpack.packb(old_doc, use_bin_type=True))
    assert (old.part_id, old.meta, old.late) == (None, None, None) and old.schema_version == 1
    assert {k: getattr(old, k) for k in old_doc} == old_doc


# ---- two cameras on the real broker ------------------------------------------------------------

PARTS = 24
MISSING_SIDE = {5, 17}  # parts whose side camera frame never comes


@pytest.mark.kafka
def test_two_cameras_give_one_part_verdict_per_part_and_a_missing_view_is_named(stack, tmp_path):
    from lineguard.engines.training import train
    from lineguard.harness import LocalPipeline
    from lineguard.kafka import ensure_topics, producer_client
    from lineguard.producers.synthetic import SyntheticCamera
    from lineguard.schemas import Frame, topics
    from lineguard.schemas import image as imagecodec
    from lineguard.stores import ChdbStore

    from pipeline_helpers import read_topics

    tag = uuid.uuid4().hex[:6]
    line = f"parts{tag}"
    camera = SyntheticCamera("washer", size=128, seed=1)
    camera.write_mvtec(tmp_path / "data", n_train=30, n_test_good=2, n_test_defect=2)
    train("baseline", tmp_path / "data", tmp_path / "models" / "washer", name="washer", version="parts")
    plant = json.dumps({line: {"part_views": ["top", "side"], "part_deadline_ms": 4000,
                               "verdict_deadline_ms": 120_000}})
    kafka = KafkaConfig(bootstrap_servers=stack.kafka_bootstrap)
    pipeline = LocalPipeline(kafka, tmp_path / "state", [line], group=f"processors-{tag}", log_dir=tmp_path,
                             model_dir=tmp_path / "models", LINEGUARD_PLANT__LINES=plant)
    ensure_topics(kafka, [line])
    try:
        pipeline.processor()
        producer = producer_client(kafka)
        jpeg = {}
        now = time.time_ns()
        for index in range(PARTS):
            for view in ("top", "side"):
                if view == "side" and index in MISSING_SIDE:
                    continue
                if view not in jpeg:
                    jpeg[view], _, _ = imagecodec.encode(camera.render(9000 + len(jpeg), defect=None).image, "jpeg")
                frame = Frame(frame_id=new_frame_id(), line_id=line, camera_id=view, product="washer",
                              captured_at_ns=now + index * 50 * MS, seq=index, encoding="jpeg", image=jpeg[view],
                              meta={"serial": f"SN{index:04d}"}, part_id=f"part-{index:04d}")
                producer.produce(topics.frames(line), key=view.encode(), value=frame.encode())
        assert producer.flush(30) == 0
        parts = pipeline.start("parts", ["parts", "--line", line, "--until-idle", "8"])
        assert parts.wait(240) == 0, parts.tail(30)
        summary = [ln for ln in parts.output().splitlines() if ln.startswith("parts:")][-1]
        print(summary)

        decided = read_topics(kafka, [topics.parts(line)], PartVerdict.decode, expect=PARTS)
        per_part = Counter(p.part_id for p in decided)
        assert len(per_part) == PARTS and set(per_part.values()) == {1}, per_part  # exactly one each
        for part in decided:
            index = int(part.part_id.split("-")[1])
            assert part.meta == {"serial": f"SN{index:04d}"}  # the serial reaches the MES
            if index in MISSING_SIDE:
                assert (part.reason, part.missing_views, part.is_defective) == ("deadline", ["side"], True)
                assert [v["camera_id"] for v in part.views] == ["top"]
            else:
                assert (part.reason, part.missing_views) == ("complete", [])
                assert sorted(v["camera_id"] for v in part.views) == ["side", "top"]
        assert f"decided={PARTS} complete={PARTS - len(MISSING_SIDE)} deadline={len(MISSING_SIDE)}" in summary

        sink = pipeline.sink("parts", until_idle=4)
        assert sink.wait(180) == 0, sink.tail(30)
        assert f"written={PARTS} deadletter=0" in sink.output()
        store = ChdbStore(tmp_path / "state" / "chdb")
        try:
            rows = store.query(f"SELECT part_id, reason, missing_views FROM lineguard.parts WHERE line_id = '{line}'")
        finally:
            store.close()
        assert len(rows) == PARTS
        assert sorted(r["part_id"] for r in rows if r["reason"] == "deadline") == [f"part-{i:04d}" for i in sorted(MISSING_SIDE)]
        print(f"parts on the real broker: parts={PARTS} part_verdicts={len(decided)} "
              f"missing_view_parts={sorted(p.part_id for p in decided if p.missing_views)} clickhouse_rows={len(rows)}")
    finally:
        pipeline.stop_all()
