"""The gate's metrics: :class:`GateCounts`, what one runner returns, and the Prometheus series
(served by ``lineguard gate`` when ``gate.metrics_port`` is set; see lineguard/metrics.py).
Every series carries the gate kind (``opcua``/``mqtt``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

SENT = Counter("lineguard_gate_decisions_sent", "Decisions written to the PLC (confirmed by it or its broker)",
               ["gate", "line"])
DROPPED = Counter("lineguard_gate_decisions_dropped",
                  "Decisions not written, on purpose: late (late, or past the deadline, when read), "
                  "expired (the deadline passed while queued for the PLC), invalid (not a PartVerdict)",
                  ["gate", "line", "reason"])
CONNECTED = Gauge("lineguard_gate_connected", "1 while the PLC (OPC UA server or MQTT broker) is connected", ["gate"])
CONNECT_FAILURES = Counter("lineguard_gate_connect_failures", "Failed connection attempts", ["gate"])
HEARTBEATS = Counter("lineguard_gate_heartbeats", "Heartbeats written to the PLC", ["gate"])
LAST_HEARTBEAT = Gauge("lineguard_gate_last_heartbeat_timestamp_seconds", "When the last heartbeat was written",
                       ["gate"])
QUEUED = Gauge("lineguard_gate_queued_decisions", "Decisions waiting for the PLC", ["gate"])
SLACK = Histogram("lineguard_gate_deadline_slack_seconds", "Time left before a decision's deadline when written",
                  ["gate"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


@dataclass
class GateCounts:
    consumed: int = 0         # PartVerdict messages read from Kafka
    sent: int = 0             # decisions the PLC (or broker) confirmed
    dropped_late: int = 0     # late on arrival: flagged late, or already past the deadline
    dropped_expired: int = 0  # the deadline passed while the decision waited for the PLC
    invalid: int = 0          # messages that are not a valid PartVerdict
    heartbeats: int = 0
    connects: int = 0         # successful connections
    disconnects: int = 0      # connections lost (a write or heartbeat failed)

    def summary(self, kind: str) -> str:
        return (f"gate: kind={kind} consumed={self.consumed} sent={self.sent} dropped_late={self.dropped_late} "
                f"dropped_expired={self.dropped_expired} invalid={self.invalid} disconnects={self.disconnects}")
