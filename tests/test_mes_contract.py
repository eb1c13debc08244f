"""The verdict topics as an MES integrator sees them.

The consuming side here is deliberately independent of lineguard: plain confluent-kafka,
msgpack and jsonschema, the topic names and rules as the README's "MES contract" states
them, and the JSON Schema file read from disk. lineguard is used only to make the data
(the shared pipeline dataset) and, at the end, to check ``lineguard tail`` against it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import msgpack
import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import ConfigResource

from analytics_dataset import get_dataset
from pipeline_helpers import Component

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "verdict.schema.json"
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


# -- an MES client: no lineguard below this line until the tests -------------------------------

def mes_read(bootstrap: str, line_id: str, idle_s: float = 3.0, timeout_s: float = 60.0) -> list[dict]:
    """Every message of ``lineguard.verdicts.<line_id>`` from the beginning, with key, partition, offset."""
    import time

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"mes-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.subscribe([f"lineguard.verdicts.{line_id}"])
    out, eof, last = [], set(), time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if eof and time.monotonic() - last > idle_s:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise RuntimeError(msg.error().str())
            last = time.monotonic()
            out.append({"key": msg.key(), "partition": msg.partition(), "offset": msg.offset(),
                        "value": msgpack.unpackb(msg.value(), raw=False)})
    finally:
        consumer.close()
    return out


def mes_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# -- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(stack, tmp_path_factory):
    return get_dataset(stack, tmp_path_factory)


@pytest.fixture(scope="module")
def messages(dataset) -> dict[str, list[dict]]:
    return {line: mes_read(dataset.kafka.bootstrap_servers, line) for line in dataset.lines}


def test_every_verdict_validates_against_the_published_json_schema(messages, dataset):
    validator = mes_validator()
    total = 0
    for line, msgs in messages.items():
        for m in msgs:
            v = m["value"]
            errors = sorted(validator.iter_errors(v), key=str)
            assert not errors, f"{line} p{m['partition']}@{m['offset']}: {errors[0].message}"
            assert v["line_id"] == line
            assert m["key"] == v["camera_id"].encode()  # the key is the camera
            assert re.fullmatch(r"[0-9a-f]{32}", v["frame_id"])
            assert v["is_defective"] is (v["score"] > v["threshold"])
            if v["heatmap_key"] is not None:
                day = datetime.fromtimestamp(v["captured_at_ns"] / 1e9, timezone.utc)
                assert v["heatmap_key"] == f"{line}/{day:%Y/%m/%d}/{v['frame_id']}.png"
            assert v["scored_at_ns"] >= v["captured_at_ns"]
        total += len(msgs)
    assert total == len(dataset.verdicts)
    print(f"\nMES consumer: {total} verdict messages on {len(messages)} lines, all valid against {SCHEMA_FILE.name}")


def test_the_schema_rejects_what_the_contract_forbids(messages):
    validator = mes_validator()
    sample = next(iter(messages.values()))[0]["value"]
    assert validator.is_valid(sample)
    assert validator.is_valid({**sample, "a_field_from_a_newer_producer": 1})  # forward compatible
    for broken in ({k: v for k, v in sample.items() if k != "score"}, {**sample, "score": "0.3"},
                   {**sample, "is_defective": 1}, {**sample, "schema_version": 2}, {**sample, "seq": 1.5}):
        assert not validator.is_valid(broken), broken


def test_per_camera_order_one_partition_per_camera_and_frame_id_idempotence(messages, dataset):
    unique: set[str] = set()
    for line, msgs in messages.items():
        partitions: dict[str, set[int]] = defaultdict(set)
        by_partition: dict[int, list[dict]] = defaultdict(list)
        for m in msgs:
            partitions[m["value"]["camera_id"]].add(m["partition"])
            by_partition[m["partition"]].append(m)
        assert all(len(p) == 1 for p in partitions.values()), partitions  # a camera never spans partitions
        for part_msgs in by_partition.values():
            seen: set[str] = set()
            last_seq: dict[str, int] = {}
            for m in sorted(part_msgs, key=lambda m: m["offset"]):
                v = m["value"]
                if v["frame_id"] in seen:
                    continue  # an at-least-once repeat: the MES ignores it by frame_id
                seen.add(v["frame_id"])
                assert v["seq"] > last_seq.get(v["camera_id"], -1), (v["camera_id"], v["seq"])
                last_seq[v["camera_id"]] = v["seq"]
        unique |= {m["value"]["frame_id"] for m in msgs}
    repeats = sum(len(msgs) for msgs in messages.values()) - len(unique)
    assert len(unique) == dataset.frames_sent and repeats == len(dataset.replayed_ids) > 0
    print(f"\nMES consumer: {len(unique)} distinct frames, {repeats} repeated verdicts dropped by frame_id")


def test_verdict_topics_keep_seven_days(dataset):
    from lineguard.kafka import admin_client

    admin = admin_client(dataset.kafka)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, f"lineguard.verdicts.{line}") for line in dataset.lines]
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(timeout=30)
        assert int(config["retention.ms"].value) == SEVEN_DAYS_MS, resource


def test_lineguard_tail_prints_the_same_verdicts(messages, dataset, tmp_path):
    line = dataset.lines[0]
    tail = Component(["tail", "--line", line, "--from-beginning", "--json", "--until-idle", "4"], dataset.env,
                     tmp_path / "tail.log")
    assert tail.wait(90) == 0, tail.output()[-2000:]
    lines = [l for l in tail.output().splitlines() if l.startswith("{")]
    validator = mes_validator()
    printed = [json.loads(l) for l in lines]
    assert all(validator.is_valid(v) for v in printed)
    assert sorted(v["frame_id"] for v in printed) == sorted(m["value"]["frame_id"] for m in messages[line])
    assert f"tail: line={line} verdicts={len(printed)} undecodable=0" in tail.output()
    text = Component(["tail", "--line", line, "--from-beginning", "--count", "5"], dataset.env, tmp_path / "text.log")
    assert text.wait(90) == 0, text.output()[-2000:]
    shown = [l for l in text.output().splitlines() if " score=" in l]
    assert len(shown) == 5 and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cam-", l) for l in shown), shown
    print("\n" + "\n".join(shown[:2]))


def test_contract_page_states_the_contract_with_the_current_schema():
    page = (Path(__file__).resolve().parents[1] / "docs" / "mes-contract.md").read_text()
    section = page.split("## MES contract: the verdict topics", 1)[1].split("\n## ", 1)[0]
    assert SCHEMA_FILE.read_text().strip() in section  # the schema on the page is the file
    for promise in ("lineguard.verdicts.<line_id>", "**Key**: the `camera_id`", "**Order**: per camera",
                    "at-least-once", "Deduplicate on\n  `frame_id`", "**Retention**", "lineguard tail"):
        assert promise in section, promise
