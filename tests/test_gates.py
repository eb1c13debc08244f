"""The reject gate against real servers: asyncua's own OPC UA server (tests/gate/opcua_server.py, a
subprocess recording every write) and Debian's mosquitto broker (tests/gate/install.sh), with PartVerdicts
published straight into ``lineguard.parts.<line>`` on the tests' real Kafka broker.

Each end-to-end test takes the PLC side away and brings it back: the decisions still within their deadline
are all delivered after it returns (checked at the server side, part by part), the late ones and those whose
deadline passed while queued are dropped and counted exactly, and every offset ends committed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lineguard import kafka
from lineguard.config import GateConfig, MqttGateConfig, OpcUaGateConfig, load_settings
from lineguard.harness import wait_for
from lineguard.schemas import PartVerdict, topics

from lineguard.gates.decisions import Decision, DecisionQueue, OffsetLedger, timely
from lineguard.gates.plc import SequenceCounter

REPO_ROOT = Path(__file__).resolve().parents[1]
OPCUA_SERVER = REPO_ROOT / "tests" / "gate" / "opcua_server.py"
MOSQUITTO = Path("/usr/sbin/mosquitto")
SECOND_NS = 1_000_000_000


def verdict(part_id: str, line_id: str, *, deadline_in_s: float, late: bool = False,
            defective: bool = False) -> PartVerdict:
    now = time.time_ns()
    return PartVerdict(part_id=part_id, line_id=line_id, product="washer", decided_at_ns=now,
                       first_captured_at_ns=now - SECOND_NS // 2, deadline_at_ns=now + int(deadline_in_s * SECOND_NS),
                       reason="complete", views=[{"camera_id": "top", "is_defective": defective}],
                       expected_views=["top"], missing_views=[], worst_score_ratio=1.5 if defective else 0.5,
                       worst_camera_id="top", is_defective=defective, late=late)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- units: no server needed -----------------------------------------------------------

def test_offsets_commit_only_below_the_first_unsettled_one() -> None:
    ledger, p = OffsetLedger(), ("lineguard.parts.l", 0)
    for offset in (5, 6, 7):
        ledger.read(p, offset)
    ledger.settle(p, 7)  # an expired decision behind a pending one is dropped first
    assert ledger.committable() == {p: 5}
    ledger.mark_committed({p: 5})
    ledger.settle(p, 5)
    assert ledger.committable() == {p: 6}
    ledger.settle(p, 6)
    assert ledger.committable() == {p: 8} and ledger.unsettled() == 0


def test_queue_drops_expired_decisions_wherever_they_are() -> None:
    queue = DecisionQueue(capacity=3)
    for i, deadline_in_s in enumerate((60, -1, 60)):
        queue.put(Decision.of(verdict(f"p{i}", "l", deadline_in_s=deadline_in_s), "t", 0, i))
    assert queue.full
    with pytest.raises(OverflowError):
        queue.put(Decision.of(verdict("p9", "l", deadline_in_s=60), "t", 0, 9))
    assert [d.part_id for d in queue.drop_expired()] == ["p1"]
    assert [d.part_id for d in queue] == ["p0", "p2"]
    assert timely(verdict("x", "l", deadline_in_s=1)) and not timely(verdict("x", "l", deadline_in_s=1, late=True))
    assert not timely(verdict("x", "l", deadline_in_s=-0.001))
    no_deadline = verdict("x", "l", deadline_in_s=0)
    no_deadline.deadline_at_ns = None  # the line has no verdict deadline
    assert timely(no_deadline) and not Decision.of(no_deadline, "t", 0, 0).expired()


def test_sequence_continues_above_the_plc_value_and_skips_zero_on_wrap() -> None:
    counter = SequenceCounter()
    assert counter.next("l") == 1
    counter.follow("l", 41)  # what the PLC holds after a gate restart
    assert counter.next("l") == 42
    counter.follow("l", SequenceCounter.MAX)
    assert counter.next("l") == 1


def test_mqtt_topic_styles_and_gate_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("paho.mqtt")
    from lineguard.gates.mqtt import decision_topic

    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LINEGUARD_GATE__MQTT__TOPIC_STYLE", "sparkplug")
    monkeypatch.setenv("LINEGUARD_GATE__MQTT__SPARKPLUG_GROUP_ID", "plant1")
    monkeypatch.setenv("LINEGUARD_GATE__LINES", '["press1"]')
    settings = load_settings()
    assert settings.gate.lines == ["press1"]
    assert decision_topic(settings.gate.mqtt, "press1") == "spBv1.0/plant1/DDATA/gate/press1"
    assert decision_topic(MqttGateConfig(), "press1") == "lineguard/press1/parts"


# ---- the servers -------------------------------------------------------------------------

class OpcUaPlc:
    """asyncua's server as the PLC, in a subprocess that can be killed (a PLC switched off) and restarted."""

    def __init__(self, tmp_path: Path, lines: list[str], username: str, password: str) -> None:
        self.port = free_port()
        self.record = tmp_path / "opcua-writes.jsonl"
        self.log = tmp_path / "opcua-server.log"
        self.args = [sys.executable, str(OPCUA_SERVER), "--port", str(self.port), "--lines", ",".join(lines),
                     "--record", str(self.record), "--username", username, "--password", password]
        self.proc: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def start(self) -> None:
        log = self.log.open("a")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "ready", f"the OPC UA server did not start:\n{self.log.read_text()[-3000:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no goodbye to its clients, as a PLC losing power
            self.proc.wait(10)

    def decisions(self, line: str) -> list[dict[str, Any]]:
        """Every decision written (part id, reject, sequence in one Write request), in order."""
        found = []
        if not self.record.exists():
            return found
        for row in self.record.read_text().splitlines():
            values = {node.rsplit(".", 1)[-1]: value for node, value in json.loads(row)["writes"]
                      if f".{line}." in node}
            if "sequence" in values:
                found.append(values)
        return found


class Mosquitto:
    """Debian's mosquitto on a free loopback port, with persistence so a subscriber's session (and the
    messages for it) outlive a restart of the broker."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {self.dir}/\nlog_dest stderr\n"
                             # as root it would switch to the mosquitto user, who cannot write pytest's tmp_path
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.dir / "mosquitto.log").open("a")
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=log, stderr=log)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_for(listening, 20, "mosquitto listening", interval_s=0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the sessions to its persistence file
            self.proc.wait(10)


class MqttRecorder:
    """A subscriber keeping every message on the gate's topics: a persistent session (clean_session
    False, QoS 1), so what the broker accepted while it was reconnecting is delivered to it afterwards."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"recorder-{port}", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, json.loads(msg.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the recorder could not subscribe"

    def decisions(self, line: str) -> list[dict[str, Any]]:
        return [payload for topic, payload in list(self.messages) if topic == f"lineguard/{line}/parts"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- end to end: Kafka -> gate -> server away and back -----------------------------------

def create_parts_topic(settings: Any, line: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = kafka.admin_client(settings.kafka)
    futures = admin.create_topics([NewTopic(topics.parts(line), 2, 1)], operation_timeout=30)
    for future in futures.values():
        future.result(30)
    wait_for(lambda: topics.parts(line) in admin.list_topics(timeout=5).topics, 30, "the parts topic")


def publish(settings: Any, verdicts: list[PartVerdict]) -> None:
    producer = kafka.producer_client(settings.kafka, **{"acks": "all", "enable.idempotence": True})
    for v in verdicts:
        producer.produce(topics.parts(v.line_id), key=v.part_id.encode(), value=v.encode())
    assert producer.flush(30) == 0


def exercise_outage(settings: Any, line: str, link: Any, start_server: Callable[[], None],
                    stop_server: Callable[[], None], delivered: Callable[[], list[dict[str, Any]]]) -> str:
    """Before, during and after an outage of the PLC side; returns the summary line."""
    from lineguard.gates.runner import GateRunner

    create_parts_topic(settings, line)
    group = f"lineguard-gate-test-{line}"
    gate = GateRunner(settings, link, lines=[line], group_id=group)
    stop = threading.Event()
    runner = threading.Thread(target=gate.run, args=(stop,), name="gate", daemon=True)
    start_server()
    runner.start()
    try:
        wait_for(lambda: gate.connected, 30, "the gate to connect")
        # 1. PLC up: timely decisions go through; late ones (flagged, or past the deadline on arrival) do not.
        before = [verdict(f"before-{i}", line, deadline_in_s=120, defective=i % 3 == 0) for i in range(12)]
        late = [verdict(f"late-{i}", line, deadline_in_s=120, late=True) for i in range(3)]
        late += [verdict(f"past-{i}", line, deadline_in_s=-1) for i in range(2)]
        publish(settings, before[:6] + late + before[6:])
        wait_for(lambda: len({d["part_id"] for d in delivered()}) >= len(before), 60, "the first decisions")
        wait_for(lambda: gate.counts.dropped_late == len(late), 30, "the late decisions dropped")

        # 2. PLC away: decisions queue; the ones with a short deadline expire in the queue.
        stop_server()
        wait_for(lambda: not gate.connected, 30, "the gate to notice the outage")
        during = [verdict(f"during-{i}", line, deadline_in_s=120, defective=i % 2 == 0) for i in range(10)]
        expiring = [verdict(f"expiring-{i}", line, deadline_in_s=6) for i in range(4)]
        publish(settings, [x for pair in zip(during, expiring) for x in pair] + during[len(expiring):])
        total = len(before) + len(late) + len(during) + len(expiring)
        wait_for(lambda: gate.counts.consumed == total, 30, "every decision read")
        wait_for(lambda: gate.counts.dropped_expired == len(expiring), 30, "the short deadlines to pass")
        assert not gate.connected and len(gate.queue) == len(during)

        # 3. PLC back: every queued decision still within its deadline is delivered.
        start_server()
        timely_ids = {v.part_id for v in before + during}
        wait_for(lambda: {d["part_id"] for d in delivered()} >= timely_ids, 60, "the queued decisions")
        wait_for(lambda: kafka.group_lag(settings.kafka, group, [topics.parts(line)]) == 0, 30,
                 "every offset committed")
    finally:
        stop.set()
        runner.join(30)
        stop_server()
    counts = gate.counts
    got = delivered()
    assert {d["part_id"] for d in got} == timely_ids  # none lost, nothing late or expired written
    expected_reject = {v.part_id: v.is_defective for v in before + during}
    assert all(d["reject"] == expected_reject[d["part_id"]] for d in got)
    sequences = [d["sequence"] for d in got]
    assert sequences == sorted(sequences), "the counter only rises (a re-send repeats its value)"
    assert (counts.dropped_late, counts.dropped_expired, counts.invalid) == (len(late), len(expiring), 0)
    assert counts.sent == len(got) and counts.disconnects >= 1 and counts.connects >= 2
    return (f"timely={len(timely_ids)} delivered={len({d['part_id'] for d in got})} "
            f"late_dropped={counts.dropped_late} expired_dropped={counts.dropped_expired} "
            f"writes={len(got)} reconnects={counts.connects - 1}")


@pytest.fixture
def gate_settings(settings: Any) -> Any:
    settings.gate = GateConfig(lines=[], heartbeat_s=0.5, reconnect_initial_ms=100, reconnect_max_ms=1000,
                               queue_size=100)
    return settings


@pytest.mark.kafka
def test_opcua_gate_survives_a_plc_outage(gate_settings: Any, line_ids: list[str], tmp_path: Path) -> None:
    pytest.importorskip("asyncua")
    from lineguard.gates.opcua import OpcUaLink

    line = line_ids[0]
    plc = OpcUaPlc(tmp_path, [line], username="gate", password="s3cret")
    secret = tmp_path / "opcua-password"
    secret.write_text("s3cret\n")
    gate_settings.gate.opcua = OpcUaGateConfig(endpoint=plc.endpoint, username="gate", password_file=secret,
                                               timeout_s=2.0)
    link = OpcUaLink(gate_settings.gate.opcua, [line])
    summary = exercise_outage(gate_settings, line, link, plc.start, plc.stop, lambda: plc.decisions(line))
    heartbeats = [json.loads(r) for r in plc.record.read_text().splitlines() if ".heartbeat" in r]
    assert heartbeats, "the heartbeat node was written"
    # A wrong password is refused by the server, and said so (the runner would retry with back-off).
    from lineguard.gates.plc import PlcUnavailable

    plc.start()
    intruder = OpcUaLink(OpcUaGateConfig(endpoint=plc.endpoint, username="gate", password="guess"), [line])
    try:
        with pytest.raises(PlcUnavailable, match="BadUserAccessDenied"):
            intruder.connect()
    finally:
        intruder.stop()
        plc.stop()
    print(f"opcua gate: {summary} heartbeats={len(heartbeats)}")


@pytest.mark.kafka
def test_mqtt_gate_survives_a_broker_outage(gate_settings: Any, line_ids: list[str], tmp_path: Path) -> None:
    pytest.importorskip("paho.mqtt")
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is not installed: make gate-deps (tests/gate/install.sh)")
    from lineguard.gates.mqtt import MqttLink

    line = line_ids[0]
    broker = Mosquitto(tmp_path)
    broker.start()
    recorder = MqttRecorder(broker.port, "lineguard/#")
    broker.stop()  # exercise_outage starts it
    gate_settings.gate.mqtt = MqttGateConfig(port=broker.port, client_id=f"gate-{line}", qos=1, timeout_s=2.0)
    link = MqttLink(gate_settings.gate.mqtt, [line])
    try:
        summary = exercise_outage(gate_settings, line, link, broker.start, broker.stop,
                                  lambda: recorder.decisions(line))
        beats = [p for t, p in list(recorder.messages) if t == f"lineguard/{line}/heartbeat"]
        assert beats and all(p["line_id"] == line for p in beats)
    finally:
        recorder.close()
        broker.stop()
    print(f"mqtt gate: {summary} heartbeats={len(beats)}")


@pytest.mark.kafka
def test_gate_command_holds_a_full_queue_until_the_broker_returns(settings: Any, line_ids: list[str],
                                                                   tmp_path: Path) -> None:
    """``lineguard gate mqtt`` as a plant runs it: a queue of 3 while the broker is away pauses reading
    (the rest wait in Kafka, uncommitted); when the broker returns all of them are delivered."""
    pytest.importorskip("paho.mqtt")
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is not installed: make gate-deps (tests/gate/install.sh)")
    import urllib.request

    from lineguard.components import Component, component_env

    line = line_ids[0]
    create_parts_topic(settings, line)
    broker = Mosquitto(tmp_path)
    broker.start()
    recorder = MqttRecorder(broker.port, "lineguard/#")
    broker.stop()
    metrics_port = free_port()
    env = component_env(settings.kafka.bootstrap_servers, tmp_path / "state",
                        LINEGUARD_GATE__MQTT__PORT=str(broker.port), LINEGUARD_GATE__QUEUE_SIZE="3",
                        LINEGUARD_GATE__RECONNECT_MAX_MS="500", LINEGUARD_GATE__METRICS_PORT=str(metrics_port))
    gate = Component(["gate", "mqtt", "--lines", line, "--group", f"gate-cli-{line}"], env,
                     tmp_path / "gate.log")

    def queued() -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
        except OSError:
            return -1
        return next((float(row.split()[-1]) for row in text.splitlines()
                     if row.startswith("lineguard_gate_queued_decisions{")), -1)
    try:
        sent = [verdict(f"held-{i}", line, deadline_in_s=120, defective=i == 4) for i in range(8)]
        publish(settings, sent)
        wait_for(lambda: queued() == 3, 60, "a full queue of 3", watch=[gate])
        time.sleep(1)
        assert queued() == 3 and not recorder.decisions(line)
        broker.start()
        wait_for(lambda: {d["part_id"] for d in recorder.decisions(line)} == {v.part_id for v in sent}, 60,
                 "every held decision delivered", watch=[gate])
    finally:
        code = gate.stop()
        recorder.close()
        broker.stop()
    summary = [row for row in gate.output().splitlines() if row.startswith("gate: ")]
    assert code == 0 and summary, gate.tail(30)
    assert "consumed=8 sent=8 dropped_late=0 dropped_expired=0" in summary[-1], summary[-1]
    assert {d["part_id"]: d["reject"] for d in recorder.decisions(line)} == {v.part_id: v.is_defective for v in sent}
    print(f"mqtt gate command: timely={len(sent)} delivered={len(recorder.decisions(line))} late_dropped=0 "
          f"expired_dropped=0 queue_size=3")
