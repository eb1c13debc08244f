"""Processors scale across lines: every line's frame partitions are spread over the workers.

The assignment function and the faust assignor are tested directly; then real ``lineguard process``
workers on the shared stack: 4 lines x 2 partitions x 4 workers (each owns 2 partitions, all 4 score),
and a line created while the workers run (consumed without a restart).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import faust
from confluent_kafka import KafkaException
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from lineguard.config import KafkaConfig
from lineguard.engines.training import train
from lineguard.harness import LocalPipeline, describe, wait_for
from lineguard.kafka import admin_client, coordinator_not_ready, ensure_topics, producer_client
from lineguard.processors.assignor import LineSpreadingAssignor, spread_partitions
from lineguard.processors.lines import LINE_DISCOVERY_S, LineSelection
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import Frame, Verdict, new_frame_id, topics
from lineguard.schemas import image as imagecodec

from pipeline_helpers import read_topics

Partition = tuple[str, int]


def _lines(n: int) -> dict[str, int]:
    return {topics.frames(f"L{i}"): 2 for i in range(n)}


def _workers(n: int, subscribed: dict[str, int]) -> dict[str, list[str]]:
    return {f"w{i}": list(subscribed) for i in range(n)}


def _shares(owned: dict[str, set[Partition]]) -> list[int]:
    return sorted(len(tps) for tps in owned.values())


def _check_complete(owned: dict[str, set[Partition]], partitions: dict[str, int]) -> None:
    placed = [tp for tps in owned.values() for tp in tps]
    assert sorted(placed) == sorted((t, p) for t, n in partitions.items() for p in range(n))  # each exactly once


# ---- the assignment function -------------------------------------------------------------

@pytest.mark.parametrize("lines, workers, shares", [
    (4, 4, [2, 2, 2, 2]),
    (10, 4, [5, 5, 5, 5]),
    (1, 4, [0, 0, 1, 1]),
    (3, 4, [1, 1, 2, 2]),
])
def test_every_worker_gets_an_even_share(lines: int, workers: int, shares: list[int]) -> None:
    partitions = _lines(lines)
    owned = spread_partitions(partitions, _workers(workers, partitions), {})
    _check_complete(owned, partitions)
    assert _shares(owned) == shares
    if lines >= workers:  # a line's two partitions sit on two workers
        for tps in owned.values():
            assert len({t for t, _ in tps}) == len(tps)


def test_a_joining_worker_takes_partitions_only_from_those_above_the_new_share() -> None:
    partitions = _lines(4)
    before = spread_partitions(partitions, _workers(4, partitions), {})
    after = spread_partitions(partitions, _workers(5, partitions), before)
    _check_complete(after, partitions)
    assert _shares(after) == [1, 1, 2, 2, 2]  # 8 over 5
    moved = sum(len(before[w] - after[w]) for w in before)
    assert moved == 1 and len(after["w4"]) == 1  # the fewest moves that make room for the newcomer
    for w in before:
        assert after[w] <= before[w]


def test_a_leaving_worker_only_moves_its_own_partitions() -> None:
    partitions = _lines(10)
    before = spread_partitions(partitions, _workers(4, partitions), {})
    survivors = {w: subs for w, subs in _workers(4, partitions).items() if w != "w2"}
    after = spread_partitions(partitions, survivors, {w: before[w] for w in survivors})
    _check_complete(after, partitions)
    assert _shares(after) == [6, 7, 7]  # 20 over 3
    for w in survivors:
        assert before[w] <= after[w]  # nobody lost a partition
    assert set().union(*(after[w] - before[w] for w in survivors)) == before["w2"]


def test_a_rebalance_without_changes_moves_nothing_and_a_stale_claim_goes_once() -> None:
    partitions = _lines(3)
    before = spread_partitions(partitions, _workers(4, partitions), {})
    assert spread_partitions(partitions, _workers(4, partitions), before) == before
    # w3 comes back with a stale view that claims w0's partitions too (a zombie): each placed once.
    stale = {**before, "w3": before["w3"] | before["w0"]}
    again = spread_partitions(partitions, _workers(4, partitions), stale)
    _check_complete(again, partitions)
    assert _shares(again) == [1, 1, 2, 2]


def test_partitions_go_only_to_subscribers_and_a_new_line_is_spread() -> None:
    partitions = _lines(2)
    before = spread_partitions(partitions, _workers(2, partitions), {})
    grown = {**partitions, topics.frames("new"): 2}
    # w0 already subscribes to the new line, w1 not yet: the new partitions can only go to w0.
    halfway = spread_partitions(grown, {"w0": list(grown), "w1": list(partitions)}, before)
    _check_complete(halfway, grown)
    assert {tp for tp in halfway["w1"]} <= set(before["w1"])
    assert {t for t, _ in halfway["w1"]} <= set(partitions)
    settled = spread_partitions(grown, _workers(2, grown), halfway)
    _check_complete(settled, grown)
    assert _shares(settled) == [3, 3]


# ---- the faust assignor ------------------------------------------------------------------

class _Cluster:
    """The one question the assignor asks of aiokafka's ClusterMetadata."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions[topic])) if topic in self.partitions else None


def test_the_faust_assignor_spreads_frame_topics_over_the_group() -> None:
    app = faust.App("scaling-unit", PartitionAssignor=LineSpreadingAssignor)
    assignor = app.assignor
    assert isinstance(assignor, LineSpreadingAssignor)
    partitions = _lines(10)
    others = {"app-source": 4, "app-table-changelog": 4}  # would a table's topics stay co-partitioned?
    empty = ClientMetadata(assignment=ClientAssignment(actives={}, standbys={}), url=str(app.conf.canonical_url),
                           changelog_distribution={}).dumps()
    members = {f"member-{i}": ConsumerProtocolMemberMetadata(assignor.version, sorted({**partitions, **others}),
                                                             empty) for i in range(4)}
    result = assignor.assign(_Cluster({**partitions, **others}), members)
    everything = {m: {(t, p) for t, ps in a.assignment for p in ps} for m, a in result.items()}
    owned = {m: {tp for tp in tps if tp[0] in partitions} for m, tps in everything.items()}
    _check_complete(owned, partitions)
    assert _shares(owned) == [5, 5, 5, 5]  # faust's own assignor: 10, 10, 0, 0
    # Other topics keep faust's co-partitioned assignment: partition i of both on one member.
    rest = {m: {tp for tp in tps if tp[0] in others} for m, tps in everything.items()}
    _check_complete(rest, others)
    for tps in rest.values():
        assert {p for t, p in tps if t == "app-source"} == {p for t, p in tps if t == "app-table-changelog"}
    # A member accepts its assignment (faust checks the Kafka assignment against its own metadata).
    mine = result["member-0"]
    assignor.on_assignment(ConsumerProtocolMemberAssignment(mine.version, mine.assignment, mine.user_data))
    assert {(tp.topic, tp.partition) for tp in assignor.assigned_actives()} == everything["member-0"]


def test_line_selection_takes_ids_and_patterns() -> None:
    selection = LineSelection(["a1", "plant2-*", "a1"])
    assert selection.ids == ["a1"] and selection.patterns == ["plant2-*"]
    existing = [topics.frames("plant2-x"), topics.verdicts("plant2-y"), topics.frames("plant3-z"), "other"]
    assert selection.frame_topics(existing) == [topics.frames("a1"), topics.frames("plant2-x")]
    with pytest.raises(ValueError):
        LineSelection(["bad/line*"])


# ---- real workers on the shared stack ------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline model for the synthetic washer (the cheapest engine to score with)."""
    root = tmp_path_factory.mktemp("scaling-models")
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(root / "data", n_train=30, n_test_good=2,
                                                                    n_test_defect=2)
    train("baseline", root / "data", root / "models" / "washer", name="washer", version="scaling")
    return root / "models"


def _pipeline(stack, tmp_path: Path, models: Path, lines: int) -> LocalPipeline:  # noqa: ANN001
    tag = uuid.uuid4().hex[:6]
    return LocalPipeline(KafkaConfig(bootstrap_servers=stack.kafka_bootstrap), tmp_path / "state",
                         [f"sc{tag}-{i}" for i in range(lines)], group=f"processors-sc{tag}", log_dir=tmp_path,
                         model_dir=models, LINEGUARD_PROCESSOR__INFERENCE_THREADS="1")


def group_assignment(kafka: KafkaConfig, group: str) -> tuple[str, list[set[Partition]]]:
    """The group's state as the broker reports it and each member's partitions."""
    admin = admin_client(kafka)
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except (KafkaException, TimeoutError) as exc:  # the group's coordinator is not ready yet
        if isinstance(exc, KafkaException) and not coordinator_not_ready(exc.args[0]):
            raise
        return "", []
    return description.state.name, [{(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
                                    for m in description.members]


def wait_for_assignment(p: LocalPipeline, workers: list, shares: list[int], partitions: set[Partition],  # noqa: ANN001
                        timeout_s: float) -> list[set[Partition]]:
    seen: list[tuple[str, list[set[Partition]]]] = [("", [])]

    def settled() -> bool:
        seen[0] = group_assignment(p.kafka, p.group)
        state, members = seen[0]
        return (state == "STABLE" and sorted(len(m) for m in members) == shares
                and set().union(*members) == partitions)
    try:
        wait_for(settled, timeout_s, f"the group to settle on {shares}", interval_s=1.0, watch=workers)
    except (TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}; last seen {seen[0]}\n{describe(workers)}") from None
    return seen[0][1]


def send_frames(kafka: KafkaConfig, lines: list[str], per_partition: int) -> dict[str, Partition]:
    """``per_partition`` frames to each partition of each line; frame id -> where it went."""
    jpeg, _, _ = imagecodec.encode(SyntheticCamera(size=128, seed=5, defect_rate=0).render(0).image, "jpeg")
    producer = producer_client(kafka)
    sent: dict[str, Partition] = {}
    for line in lines:
        for partition in range(kafka.frame_partitions):
            for seq in range(per_partition):
                frame = Frame(frame_id=new_frame_id(), line_id=line, camera_id=f"cam{partition}", product="washer",
                              captured_at_ns=time.time_ns(), seq=seq, encoding="jpeg", image=jpeg)
                producer.produce(topics.frames(line), key=frame.camera_id.encode(), value=frame.encode(),
                                 partition=partition)
                sent[frame.frame_id] = (topics.frames(line), partition)
    assert producer.flush(30) == 0
    return sent


def all_partitions(p: LocalPipeline, lines: list[str]) -> set[Partition]:
    return {(topics.frames(line), i) for line in lines for i in range(p.kafka.frame_partitions)}


@pytest.mark.kafka
def test_four_workers_share_four_lines_and_all_score(stack, tmp_path: Path, models: Path) -> None:  # noqa: ANN001
    p = _pipeline(stack, tmp_path, models, lines=4)
    ensure_topics(p.kafka, p.lines)
    workers = [p.processor(f"processor{i}") for i in range(4)]
    try:
        owned = wait_for_assignment(p, workers, [2, 2, 2, 2], all_partitions(p, p.lines), timeout_s=240)
        print("assignment:", sorted(sorted(f"{t.rsplit('-', 1)[1]}[{n}]" for t, n in m) for m in owned))
        sent = send_frames(p.kafka, p.lines, per_partition=6)
        verdicts = read_topics(p.kafka, p.verdict_topics(), Verdict.decode, expect=len(sent), timeout_s=180)
        per_frame = Counter(v.frame_id for v in verdicts)
        assert set(per_frame) == set(sent) and set(per_frame.values()) == {1}, \
            f"{len(verdicts)} verdicts for {len(sent)} frames\n{describe(workers)}"
        by_worker: dict[str, set[Partition]] = {}
        for v in verdicts:
            by_worker.setdefault(v.processor_id, set()).add(sent[v.frame_id])
        print("scored:", {w: sorted(tps) for w, tps in by_worker.items()})
        assert len(by_worker) == 4  # every worker scored
        # Each worker scored exactly the partitions the broker says it owns.
        assert sorted(map(sorted, by_worker.values())) == sorted(map(sorted, owned))
    finally:
        p.stop_all()


@pytest.mark.kafka
def test_a_line_created_while_workers_run_is_consumed_without_a_restart(stack, tmp_path: Path,  # noqa: ANN001
                                                                        models: Path) -> None:
    p = _pipeline(stack, tmp_path, models, lines=2)
    first, created_later = p.lines
    ensure_topics(p.kafka, [first])
    pattern = first.rsplit("-", 1)[0] + "-*"
    workers = [p.start(f"processor{i}", ["process", "--lines", pattern]) for i in range(2)]
    try:
        wait_for_assignment(p, workers, [1, 1], all_partitions(p, [first]), timeout_s=180)
        ensure_topics(p.kafka, [created_later])
        created_at = time.monotonic()
        sent = send_frames(p.kafka, [created_later], per_partition=4)
        # Discovery, then one rebalance per worker as each subscribes: bounded well under a minute.
        owned = wait_for_assignment(p, workers, [2, 2], all_partitions(p, p.lines),
                                    timeout_s=LINE_DISCOVERY_S + 60)
        print(f"new line assigned after {time.monotonic() - created_at:.1f}s:", owned)
        verdicts = read_topics(p.kafka, [topics.verdicts(created_later)], Verdict.decode, expect=len(sent),
                               timeout_s=120)
        assert {v.frame_id for v in verdicts} == set(sent), describe(workers)
        # Scored by the workers started before the line existed, which are still the same processes.
        assert all(w.alive() for w in workers)
        assert {v.processor_id for v in verdicts} <= {f"{os.uname().nodename}-{w.proc.pid}" for w in workers}
        print(f"{len(verdicts)} verdicts for {len(sent)} frames of the new line")
    finally:
        p.stop_all()
