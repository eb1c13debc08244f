"""Broker faults on the 3-broker KRaft cluster (``cluster_stack``): every frame is counted after the fault.

The lines' topics have replication factor 3 and ``min.insync.replicas`` 2 (the
"auto" setting on three live brokers; checked first). Camera producers send
with ``acks=all`` and idempotence, the processors' faust producer with acks=all.
Two lines x two cameras stream to one processor worker and the ClickHouse sink
(real processes), and one fault is injected for real:

- ``broker_kill``: SIGKILL of the broker leading a busy frames partition, started again later;
- ``rolling_restart``: every broker stopped and started, one at a time, under load;
- ``broker_freeze``: the leader of a busy frames partition SIGSTOPped for 60 s, then resumed.

Each prints the tally line of the single-broker fault suite (``fault_helpers.Tally``)
and asserts lost 0, duplicate rows 0, verdicts for every frame and one row each.
``LINEGUARD_FAULT_RUNS=3`` runs each fault three times in a row (default once), e.g.::

    LINEGUARD_FAULT_RUNS=3 LINEGUARD_TEST_CLUSTER_DIR=/tmp/lgcf pytest -s -m kafka tests/test_cluster_faults.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import FaultPipeline, Tally, fit_fault_models, free_port, try_scrape_sum  # noqa: E402
from pipeline_helpers import wait_for  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RUNS = int(os.environ.get("LINEGUARD_FAULT_RUNS", "1"))
each_run = pytest.mark.parametrize("run", range(1, RUNS + 1))
FPS = 5  # per camera; 4 cameras
FREEZE_S = 60


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_fault_models(tmp_path_factory.mktemp("cluster-fault-models"))


def _replicas(p: FaultPipeline) -> dict[tuple[str, int], tuple[int, int, int]]:
    """{(topic, partition): (leader, replicas, in-sync replicas)} for the lines' frame and verdict topics."""
    from lineguard.kafka import admin_client

    admin = admin_client(p.kafka)  # kept referenced until the request resolves
    metadata = admin.list_topics(timeout=10)
    return {(name, part.id): (part.leader, len(part.replicas), len(part.isrs))
            for name in p.frame_topics() + p.verdict_topics()
            for part in metadata.topics[name].partitions.values()}


def _min_insync(p: FaultPipeline, topic: str) -> int:
    from confluent_kafka.admin import ConfigResource

    from lineguard.kafka import admin_client

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = admin_client(p.kafka)  # kept referenced until the future resolves
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    return int(configs["min.insync.replicas"].value)


def _heal(local) -> None:  # noqa: ANN001
    """Every node running and none frozen (a failed run must not leave the next one a broken cluster)."""
    for node, pid in local.kafka.running().items():
        if pid is None:
            local.start_broker(node)
        elif local.kafka.frozen(node):
            local.thaw_broker(node)


def _wait_fully_replicated(p: FaultPipeline, timeout_s: float) -> None:
    wait_for(lambda: all(isr == 3 for _, _, isr in _replicas(p).values()), timeout_s,
             "every partition back to 3 in-sync replicas")


def _stream_through_fault(stack, models: Path, tmp_path: Path, fault: str, per_camera: int,  # noqa: ANN001
                          inject: Callable[[FaultPipeline, int], dict[str, int]]) -> Tally:
    """Stream 2 lines x 2 cameras through one processor and the ClickHouse sink, call ``inject``
    (with the pipeline and the processor's metrics port) once frames flow, then count everything."""
    local = stack.local
    _heal(local)
    p = FaultPipeline(stack, tmp_path, models, fault)
    assert all(rf == 3 for _, rf, _ in _replicas(p).values()), _replicas(p)
    assert _min_insync(p, p.frame_topics()[0]) == 2
    port = free_port()
    worker = p.processor(metrics_port=port)
    sink = p.sink("clickhouse")

    def scored() -> int:  # from the processor's /metrics: no Kafka request while a broker is down
        return int(try_scrape_sum(port, "lineguard_processor_verdicts_out_total") or 0)

    try:
        wait_for(lambda: try_scrape_sum(port, "lineguard_processor_frames_in_total") is not None, 120,
                 "the processor's metrics endpoint")
        producers = p.producers(count=per_camera, fps=FPS, cameras_per_line=2)
        wait_for(lambda: scored() >= 4 * FPS * 4, 120, "about 4 s of frames scored")
        before, started = scored(), time.monotonic()
        extra = inject(p, port)
        extra.update(fault_s=int(time.monotonic() - started), verdicts_before_fault=before,
                     verdicts_during_fault=scored() - before,
                     producers_streaming_after_fault=sum(prod.alive() for prod in producers))
        sent = p.wait_producers(producers, timeout_s=300)
        p.wait_all_scored(sent, 180, f"every frame scored after {fault}")
        p.wait_sink_caught_up(p.sink_group("clickhouse"), p.verdict_topics(), 90)
        assert worker.alive() and sink.alive(), p.logs()
    finally:
        p.stop_all()
        _heal(local)
    _wait_fully_replicated(p, 120)
    tally = p.tally(fault, sent, **extra)
    print(tally.line())
    assert tally.in_topics == sent == 4 * per_camera  # idempotent producers: no frame twice
    assert tally.deadletter == 0
    assert tally.verdict_frames == sent and tally.lost == 0
    assert tally.rows == sent and tally.duplicate_rows == 0
    return tally


def _busy_leader(p: FaultPipeline, local) -> int:  # noqa: ANN001
    """The node leading the first line's frames partition 0 (its first camera's frames land there)."""
    leader = _leader(p, local)
    assert leader is not None
    return leader


def _leader(p: FaultPipeline, local) -> int | None:  # noqa: ANN001
    """That partition's leader now; None while it has none or the metadata request times out."""
    from confluent_kafka import KafkaException

    try:
        return local.leader_of(p.frame_topics()[0], 0)
    except KafkaException:
        return None


@each_run
@pytest.mark.timeout(300)
def test_sigkill_the_leader_of_a_busy_frames_partition(cluster_stack, models: Path, tmp_path: Path,  # noqa: ANN001
                                                       run: int) -> None:
    """The leader of a frames partition being written is SIGKILLed; a follower in the ISR takes over
    (no acknowledged frame is lost: acks=all with 2 in sync); the node is started again 20 s later."""
    local = cluster_stack.local

    def kill(p: FaultPipeline, port: int) -> dict[str, int]:
        victim = _busy_leader(p, local)
        local.kill_broker(victim)
        wait_for(lambda: _leader(p, local) not in (None, victim), 60, "a new leader for the partition")
        new_leader = _leader(p, local)
        time.sleep(20)
        local.start_broker(victim)
        return {"killed_node": victim, "new_leader": new_leader}

    _stream_through_fault(cluster_stack, models, tmp_path, "broker_kill", per_camera=60 * FPS, inject=kill)


@each_run
@pytest.mark.timeout(400)
def test_rolling_restart_of_all_three_brokers_under_load(cluster_stack, models: Path, tmp_path: Path,  # noqa: ANN001
                                                         run: int) -> None:
    """``restart_kafka`` on a cluster: each node stopped and started, back in every ISR before the next."""
    def roll(p: FaultPipeline, port: int) -> dict[str, int]:
        pids = dict(cluster_stack.local.kafka.running())
        cluster_stack.restart_kafka()
        after = cluster_stack.local.kafka.running()
        assert all(after[n] not in (None, pids[n]) for n in pids), (pids, after)  # every node restarted
        return {"nodes_restarted": len(pids)}

    _stream_through_fault(cluster_stack, models, tmp_path, "rolling_restart", per_camera=100 * FPS, inject=roll)


@each_run
@pytest.mark.timeout(400)
def test_freeze_the_leader_of_a_busy_frames_partition_for_60s(cluster_stack, models: Path, tmp_path: Path,  # noqa: ANN001
                                                              run: int) -> None:
    """SIGSTOP: the node keeps its connections open and answers nothing, like a hung host; the
    controller fences it and moves leadership; after 60 s it resumes and catches up."""
    local = cluster_stack.local

    def freeze(p: FaultPipeline, port: int) -> dict[str, int]:
        victim = _busy_leader(p, local)
        local.freeze_broker(victim)
        try:
            time.sleep(FREEZE_S)
            moved = _leader(p, local)
        finally:
            local.thaw_broker(victim)
        return {"frozen_node": victim, "leader_while_frozen": moved or -1}

    _stream_through_fault(cluster_stack, models, tmp_path, "broker_freeze", per_camera=85 * FPS, inject=freeze)
