"""The MQTT link: each decision one JSON message (QoS ``gate.mqtt.qos``) on the line's topic,
plain (``lineguard/<line>/parts``) or named as Sparkplug B names device data
(``spBv1.0/<group>/DDATA/<edge node>/<device>``), and a heartbeat message on its own topic.

The payload is JSON in both styles: the Sparkplug B protobuf payload, its BIRTH/DEATH messages and
sequence numbers are not implemented (docs/gate.md).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lineguard.config import MqttGateConfig

from .decisions import Decision
from .plc import PlcUnavailable, SequenceCounter

PAYLOAD_VERSION = 1


def decision_topic(cfg: MqttGateConfig, line_id: str) -> str:
    if cfg.topic_style == "sparkplug":
        device = cfg.sparkplug_device_id.format(line=line_id)
        return f"spBv1.0/{cfg.sparkplug_group_id}/DDATA/{cfg.sparkplug_edge_node_id}/{device}"
    return cfg.topic.format(line=line_id)


def decision_payload(decision: Decision, sent_at_ns: int) -> bytes:
    verdict = decision.verdict
    return json.dumps({
        "schema_version": PAYLOAD_VERSION,
        "line_id": decision.line_id,
        "part_id": decision.part_id,
        "reject": decision.reject,
        "sequence": decision.sequence,
        "product": verdict.product,
        "reason": verdict.reason,
        "worst_camera_id": verdict.worst_camera_id,
        "decided_at_ns": verdict.decided_at_ns,
        "deadline_at_ns": decision.deadline_at_ns,
        "sent_at_ns": sent_at_ns,
    }, separators=(",", ":")).encode()


class MqttLink:
    """One MQTT session (clean, MQTT 3.1.1) through paho's network thread; reconnecting is the runner's job."""

    kind = "mqtt"

    def __init__(self, cfg: MqttGateConfig, lines: list[str]) -> None:
        self.cfg = cfg
        self.lines = list(lines)
        self._client: mqtt.Client | None = None
        self._sequences = SequenceCounter()  # no PLC state to read back: restarts at 1 with the gate

    def connect(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, clean_session=True,
                             reconnect_on_failure=False)
        client.connect_timeout = self.cfg.timeout_s
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.secret())
        accepted = threading.Event()
        refusal: list[str] = []

        def on_connect(_client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
            if reason.is_failure:
                refusal.append(str(reason))
            else:
                accepted.set()
        client.on_connect = on_connect
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            raise PlcUnavailable(f"MQTT {self.cfg.host}:{self.cfg.port}: {exc}") from exc
        client.loop_start()
        if not accepted.wait(self.cfg.timeout_s):
            self._discard(client)
            why = refusal[0] if refusal else f"no answer within {self.cfg.timeout_s}s"
            raise PlcUnavailable(f"MQTT {self.cfg.host}:{self.cfg.port}: connection refused: {why}")
        self._client = client

    def write(self, decision: Decision) -> None:
        if decision.sequence is None:
            decision.sequence = self._sequences.next(decision.line_id)
        self._publish(decision_topic(self.cfg, decision.line_id), decision_payload(decision, time.time_ns()))

    def heartbeat(self, count: int) -> None:
        for line in self.lines:
            payload = json.dumps({"line_id": line, "heartbeat": count, "sent_at_ns": time.time_ns()})
            self._publish(self.cfg.heartbeat_topic.format(line=line), payload.encode())

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._discard(client)

    def stop(self) -> None:
        self.close()

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1/2) or the socket write (QoS 0)."""
        client = self._client
        if client is None or not client.is_connected():
            raise PlcUnavailable("MQTT: not connected")
        try:
            info = client.publish(topic, payload, qos=self.cfg.qos)
            info.wait_for_publish(self.cfg.timeout_s)
        except (RuntimeError, ValueError) as exc:  # paho's "not connected" and "queue full"
            raise PlcUnavailable(f"MQTT publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise PlcUnavailable(f"MQTT publish to {topic}: not acknowledged within {self.cfg.timeout_s}s")

    @staticmethod
    def _discard(client: mqtt.Client) -> None:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001,S110 - closing a dead session
            pass
        client.loop_stop()
