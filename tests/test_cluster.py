"""The local stack as a 3-broker KRaft cluster: replicated topics, writes through a broker crash, per-node control.

Runs on the session's ``cluster_stack`` (its own state dir; LINEGUARD_TEST_CLUSTER_DIR reuses one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource

from lineguard.config import KafkaConfig, Settings
from lineguard.deploy.processes import process_alive
from lineguard.deploy.stack import LocalStack, StackError
from lineguard.kafka import admin_client, ensure_topics, producer_client, read_topic
from lineguard.schemas import topics

pytestmark = [pytest.mark.kafka]


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env["LINEGUARD_STATE_DIR"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "lineguard.cli", "stack", *args],
                          capture_output=True, text=True, env=env, timeout=180)


def _produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    """Write with acks=all and idempotence, so a retry after a broker crash adds no duplicate."""
    producer = producer_client(settings.kafka, acks="all", **{"enable.idempotence": True})
    failures: list[str] = []
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _msg: err and failures.append(str(err)))
    assert producer.flush(90) == 0, "messages still waiting for delivery after 90 s"
    assert failures == []


def _min_insync(admin, name: str) -> str:  # noqa: ANN001 - an AdminClient
    """A topic's min.insync.replicas, asking again while the answering broker hasn't learned of the topic yet."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    deadline = time.monotonic() + 15
    while True:
        try:
            return admin.describe_configs([resource])[resource].result(10)["min.insync.replicas"].value
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _values(settings: Settings, topic: str) -> list[bytes]:
    return [record.value for record in read_topic(settings.kafka, topic, timeout_s=60)]


def test_the_cluster_runs_three_brokers_in_one_quorum(cluster_stack) -> None:
    local = cluster_stack.local
    assert local.brokers == 3
    info = json.loads(local.stack_json.read_text())
    addresses = info["kafka_bootstrap"].split(",")
    assert len(addresses) == 3 and info["kafka_brokers"] == 3
    assert set(info["pids"]) == {"kafka", "kafka-2", "kafka-3", "s3"}

    metadata = admin_client(KafkaConfig(bootstrap_servers=cluster_stack.kafka_bootstrap)).list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    assert sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values()) == sorted(addresses)
    # One cluster id: every node's storage was formatted with the stack's.
    cluster_ids = {
        line.split("=", 1)[1]
        for node in ("kafka", "kafka-2", "kafka-3")
        for line in (local.state_dir / node / "data" / "meta.properties").read_text().splitlines()
        if line.startswith("cluster.id=")
    }
    assert len(cluster_ids) == 1
    voters = (local.state_dir / "kafka-2" / "server.properties").read_text()
    assert "controller.quorum.voters=1@" in voters and ",2@" in voters and ",3@" in voters

    status = _cli(local.state_dir, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    node_rows = [line for line in status.stdout.splitlines() if line.startswith("kafka-")]
    assert len(node_rows) == 3 and all("running" in row for row in node_rows), status.stdout


def test_lineguard_topics_get_three_replicas_and_two_in_sync(cluster_settings: Settings) -> None:
    lines = cluster_settings.processor.lines
    assert cluster_settings.kafka.replication_factor == "auto"
    ensure_topics(cluster_settings.kafka, lines)
    names = [name for line in lines for name in (topics.frames(line), topics.verdicts(line), topics.heatmaps(line))]
    names.append(topics.DEADLETTER)

    admin = admin_client(cluster_settings.kafka)
    metadata = admin.list_topics(timeout=10)
    for name in names:
        for partition in metadata.topics[name].partitions.values():
            assert sorted(partition.replicas) == [1, 2, 3], (name, partition.id, partition.replicas)
    for name in names:
        assert _min_insync(admin, name) == "2", name


def test_explicit_replication_settings_win_over_auto(cluster_settings: Settings) -> None:
    cluster_settings.kafka.replication_factor = 2
    cluster_settings.kafka.min_insync_replicas = 1
    line = cluster_settings.processor.lines[0]
    ensure_topics(cluster_settings.kafka, [line])
    admin = admin_client(cluster_settings.kafka)
    partitions = admin.list_topics(topics.frames(line), timeout=10).topics[topics.frames(line)].partitions
    assert all(len(p.replicas) == 2 for p in partitions.values())
    assert _min_insync(admin, topics.frames(line)) == "1"


def test_acks_all_writes_survive_a_killed_broker_and_its_restart(cluster_stack, cluster_settings: Settings) -> None:
    local = cluster_stack.local
    line = cluster_settings.processor.lines[0]
    ensure_topics(cluster_settings.kafka, [line])
    topic = topics.frames(line)
    sent = [f"before-{i}".encode() for i in range(200)]
    _produce(cluster_settings, topic, sent)

    victim = local.leader_of(topic, 0)
    assert victim in (1, 2, 3)
    local.kill_broker(victim)
    try:
        assert local.status()["kafka"]["nodes"][victim - 1]["running"] is False
        # Two of three replicas left: min.insync.replicas 2 still holds, acks=all writes go on.
        during = [f"during-{i}".encode() for i in range(200)]
        _produce(cluster_settings, topic, during)
        sent += during
        assert local.leader_of(topic, 0) not in (None, victim)
        assert sorted(_values(cluster_settings, topic)) == sorted(sent)
    finally:
        local.start_broker(victim)  # waits until it is back in every ISR

    partitions = admin_client(cluster_settings.kafka).list_topics(topic, timeout=10).topics[topic].partitions
    assert all(victim in p.isrs for p in partitions.values())
    after = [f"after-{i}".encode() for i in range(200)]
    _produce(cluster_settings, topic, after)
    sent += after
    received = _values(cluster_settings, topic)
    assert len(received) == len(sent) == 600  # nothing lost, nothing twice
    assert sorted(received) == sorted(sent)


def test_a_frozen_broker_shows_in_status_and_thaws(cluster_stack) -> None:
    local = cluster_stack.local
    local.freeze_broker(3)
    try:
        node = local.status()["kafka"]["nodes"][2]
        assert node["running"] and node["frozen"]
    finally:
        local.thaw_broker(3)
    assert not local.status()["kafka"]["nodes"][2]["frozen"]


def test_restart_kafka_rolls_through_every_node_keeping_data(cluster_stack, cluster_settings: Settings) -> None:
    local = cluster_stack.local
    line = cluster_settings.processor.lines[0]
    ensure_topics(cluster_settings.kafka, [line])
    topic = topics.verdicts(line)
    sent = [f"v-{i}".encode() for i in range(100)]
    _produce(cluster_settings, topic, sent)
    before = {name: local.running(name) for name in ("kafka", "kafka-2", "kafka-3")}

    local.restart_kafka()

    after = {name: local.running(name) for name in before}
    assert all(after[name] not in (None, pid) for name, pid in before.items())
    assert json.loads(local.stack_json.read_text())["kafka_bootstrap"] == cluster_stack.kafka_bootstrap
    more = [f"w-{i}".encode() for i in range(100)]
    _produce(cluster_settings, topic, more)
    assert sorted(_values(cluster_settings, topic)) == sorted(sent + more)


def test_the_state_dir_keeps_its_broker_count(cluster_stack, tmp_path: Path) -> None:
    with pytest.raises(StackError, match="3-broker"):
        LocalStack(cluster_stack.state_dir, tmp_path / "cache", brokers=1).up()
    # Without a count asked for, the state dir's own is used (what `stack status` / `down` rely on).
    assert LocalStack(cluster_stack.state_dir, tmp_path / "cache").brokers == 3


def test_stack_down_stops_every_node(cluster_stack) -> None:
    """Last in the file: it takes the session's cluster down and brings it back for later tests."""
    local = cluster_stack.local
    pids = {name: local.running(name) for name in ("kafka", "kafka-2", "kafka-3")}
    assert all(pids.values())

    down = _cli(local.state_dir, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(process_alive(pid, str(local.state_dir)) for pid in pids.values())
    assert not local.stack_json.exists()
    assert _cli(local.state_dir, "status").returncode == 3

    local.up()
    info = json.loads(local.stack_json.read_text())
    assert info["kafka_bootstrap"] == cluster_stack.kafka_bootstrap  # same ports, so clients reconnect
