"""The local stack and lineguard.kafka against the real broker and S3 server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import ConfigResource
from minio import Minio

from lineguard.config import Settings, load_settings
from lineguard.deploy.stack import LocalStack, StackError
from lineguard.kafka import (
    admin_client,
    client_config,
    consumer_client,
    count_messages,
    ensure_topics,
    producer_client,
    topic_end_offsets,
    topic_max_message_bytes,
)
from lineguard.schemas import topics

pytestmark = [pytest.mark.kafka]
MiB = 1024 * 1024


def _produce(settings: Settings, topic: str, values: list[bytes], **extra: object) -> None:
    producer = producer_client(settings.kafka, **extra)
    errors: list[KafkaError] = []
    try:
        for value in values:
            producer.produce(topic, value, on_delivery=lambda err, _msg: errors.append(err) if err else None)
            producer.poll(0)
        assert producer.flush(60) == 0, "messages still queued after 60 s"
    finally:
        producer.close()  # else it lingers, reconnecting (and logging) while the broker restarts
    assert errors == []


def _consume(settings: Settings, topic: str, count: int, timeout_s: float = 60.0) -> list[bytes]:
    consumer = consumer_client(settings.kafka, f"test-{uuid.uuid4().hex}")
    try:
        consumer.subscribe([topic])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            values.append(msg.value())
        return values
    finally:
        consumer.close()


def test_stack_json_describes_the_running_stack(stack) -> None:
    info = json.loads((stack.state_dir / "stack.json").read_text())
    assert info["kafka_bootstrap"] == stack.kafka_bootstrap
    assert info["s3_endpoint"] == stack.s3_endpoint
    assert set(info["pids"]) == {"kafka", "s3"}
    status = stack.local.status()
    assert status["kafka"]["running"] and status["s3"]["running"]
    assert status["kafka"]["address"] == stack.kafka_bootstrap
    # lineguard.config picks the stack up from the state dir alone.
    settings = load_settings(state_dir=str(stack.state_dir))
    assert settings.kafka.bootstrap_servers == stack.kafka_bootstrap
    assert settings.sinks.object_store.endpoint == stack.s3_endpoint
    assert settings.sinks.object_store.credentials() == (stack.s3_access_key, stack.s3_secret_key)


def test_up_again_is_quick_and_keeps_the_same_processes(stack) -> None:
    before = stack.local.status()
    started = time.monotonic()
    stack.local.up()
    assert time.monotonic() - started < 10
    after = stack.local.status()
    assert after["kafka"]["pid"] == before["kafka"]["pid"]
    assert after["s3"]["pid"] == before["s3"]["pid"]


def test_cli_status_reports_the_stack(stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env["LINEGUARD_STATE_DIR"] = str(stack.state_dir)
    proc = subprocess.run([sys.executable, "-m", "lineguard.cli", "stack", "status", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["kafka"]["address"] == stack.kafka_bootstrap
    assert status["s3"]["running"] is True


def test_ensure_topics_creates_every_topic_with_limits(settings: Settings) -> None:
    lines = settings.processor.lines
    created = ensure_topics(settings.kafka, lines)
    per_line = {name for line in lines for name in (topics.frames(line), topics.verdicts(line), topics.heatmaps(line))}
    assert per_line <= set(created)

    admin = admin_client(settings.kafka)
    metadata = admin.list_topics(timeout=10)
    assert topics.DEADLETTER in metadata.topics
    for line in lines:
        assert len(metadata.topics[topics.frames(line)].partitions) == settings.kafka.frame_partitions

    resources = [ConfigResource(ConfigResource.Type.TOPIC, topics.verdicts(lines[0])),
                 ConfigResource(ConfigResource.Type.TOPIC, topics.frames(lines[0]))]
    described = {res.name: fut.result(10) for res, fut in admin.describe_configs(resources).items()}
    verdict_cfg = described[topics.verdicts(lines[0])]
    assert int(verdict_cfg["retention.ms"].value) == settings.kafka.verdict_retention_ms
    frame_cfg = described[topics.frames(lines[0])]
    assert int(frame_cfg["max.message.bytes"].value) == topic_max_message_bytes(settings.kafka)

    # Idempotent: nothing new the second time, and no error.
    assert ensure_topics(settings.kafka, lines) == []


def test_five_megabyte_frame_round_trips(settings: Settings) -> None:
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    topic = topics.frames(line)
    payload = os.urandom(5 * MiB)  # incompressible, so compression can't hide the size

    _produce(settings, topic, [payload])
    assert count_messages(settings.kafka, topic) == 1
    assert sum(topic_end_offsets(settings.kafka, topic).values()) == 1
    assert _consume(settings, topic, 1) == [payload]


def test_a_message_at_the_configured_limit_passes_every_hop(settings: Settings) -> None:
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    topic = topics.heatmaps(line)
    payload = os.urandom(settings.kafka.message_max_bytes - 1024)  # 1 KiB under: the key-less envelope fits
    _produce(settings, topic, [payload], **{"compression.type": "none"})
    assert _consume(settings, topic, 1) == [payload]


def test_default_client_limits_would_refuse_a_frame(settings: Settings) -> None:
    """Why producer_config raises the limit: librdkafka's 1 MB default refuses a 5 MB frame outright."""
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    plain = Producer(client_config(settings.kafka))  # librdkafka's defaults, on purpose
    with pytest.raises(KafkaException) as raised:
        plain.produce(topics.frames(line), os.urandom(5 * MiB))
    assert raised.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    # And the raised limit still refuses anything above message_max_bytes, before the broker.
    raised_producer = producer_client(settings.kafka)
    with pytest.raises(KafkaException) as too_big:
        raised_producer.produce(topics.frames(line), b"x" * (settings.kafka.message_max_bytes + 1))
    assert too_big.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_count_messages_sums_every_partition(settings: Settings) -> None:
    line = settings.processor.lines[1]
    ensure_topics(settings.kafka, [line])
    topic = topics.verdicts(line)
    producer = producer_client(settings.kafka)
    for partition in range(settings.kafka.frame_partitions):
        for i in range(partition + 2):
            producer.produce(topic, f"v{i}".encode(), partition=partition)
    assert producer.flush(30) == 0
    expected = {p: p + 2 for p in range(settings.kafka.frame_partitions)}
    assert topic_end_offsets(settings.kafka, topic) == expected
    assert count_messages(settings.kafka, topic) == sum(expected.values())


def test_count_messages_of_a_missing_topic_raises(settings: Settings) -> None:
    with pytest.raises(KafkaException):
        count_messages(settings.kafka, f"lineguard.frames.missing-{uuid.uuid4().hex[:8]}", timeout_s=5)


def test_s3_server_stores_a_bucket_and_object(stack, settings: Settings) -> None:
    access, secret = settings.sinks.object_store.credentials()
    client = Minio(settings.sinks.object_store.endpoint, access_key=access, secret_key=secret, secure=False)
    bucket = settings.sinks.object_store.bucket
    client.make_bucket(bucket)
    assert bucket in {b.name for b in client.list_buckets()}
    body = os.urandom(256 * 1024)
    client.put_object(bucket, "line/2025/01/01/frame.png", io.BytesIO(body), len(body), content_type="image/png")
    response = client.get_object(bucket, "line/2025/01/01/frame.png")
    try:
        assert response.read() == body
        assert response.headers["Content-Type"] == "image/png"  # metadata kept (xattrs or sidecar)
    finally:
        response.close()
        response.release_conn()
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == ["line/2025/01/01/frame.png"]
    # A wrong secret is refused: the server really checks credentials.
    intruder = Minio(settings.sinks.object_store.endpoint, access_key=access, secret_key="wrong" + secret,
                     secure=False)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        intruder.list_buckets()


def test_restart_kafka_keeps_address_and_data(stack, settings: Settings) -> None:
    line = settings.processor.lines[0]
    ensure_topics(settings.kafka, [line])
    topic = topics.frames(line)
    _produce(settings, topic, [b"before-1", b"before-2", b"before-3"])
    old_pid = stack.local.running("kafka")

    started = time.monotonic()
    stack.restart_kafka()
    print(f"restart_kafka took {time.monotonic() - started:.1f}s")

    assert stack.local.running("kafka") not in (None, old_pid)
    assert json.loads((stack.state_dir / "stack.json").read_text())["kafka_bootstrap"] == stack.kafka_bootstrap
    assert count_messages(settings.kafka, topic) == 3
    _produce(settings, topic, [b"after"])
    assert sorted(_consume(settings, topic, 4)) == [b"after", b"before-1", b"before-2", b"before-3"]


def test_missing_tools_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    fresh = LocalStack(tmp_path / "state", tmp_path / "cache")
    with pytest.raises(StackError) as raised:
        fresh.up()
    message = str(raised.value)
    assert "`java` not found" in message and "`mvn` not found" in message and "`go` not found" in message
    with pytest.raises(StackError) as no_s3:
        fresh.up(with_s3=False)  # without S3, Go is not needed
    assert "`go`" not in str(no_s3.value)


