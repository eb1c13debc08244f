"""``lineguard gate opcua|mqtt [--lines L1,L2] [--group GROUP]``: PartVerdicts -> the PLC's reject gate."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from lineguard.cli_options import parse_line_ids
from lineguard.config import ConfigError, Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="write each part's pass/reject decision to the PLC (OPC UA or MQTT)",
        description="Consume lineguard.parts.<line> and write every timely PartVerdict to the PLC: OPC UA "
        "nodes (gate.opcua) or MQTT messages (gate.mqtt). Late decisions are dropped and counted; while the "
        "PLC is away decisions are queued and sent when it returns if still before their deadline. Offsets "
        "are committed once a decision is sent or dropped. Prints 'gate: kind=... sent=N dropped_late=N "
        "dropped_expired=N' on exit. The PLC contract: docs/gate.md.",
    )
    parser.add_argument("kind", choices=["opcua", "mqtt"])
    parser.add_argument("--lines", default=None,
                        help="comma-separated line ids (default: gate.lines)")
    parser.add_argument("--group", default=None,
                        help="consumer group (default: gate.consumer_group, else lineguard-gate-<kind>)")
    parser.set_defaults(handler=run_gate)


def open_link(kind: str, settings: Settings, lines: list[str]) -> Any:
    """The PLC link of ``kind``; its client library is imported only here (the ``gate`` extra)."""
    try:
        if kind == "opcua":
            from .opcua import OpcUaLink

            return OpcUaLink(settings.gate.opcua, lines)
        from .mqtt import MqttLink

        return MqttLink(settings.gate.mqtt, lines)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"lineguard gate {kind} needs {exc.name}: pip install 'lineguard[gate]'") from None


def run_gate(args: argparse.Namespace, settings: Settings) -> int:
    lines = parse_line_ids(args.lines) or settings.gate.lines
    from lineguard.metrics import serve_metrics, set_readiness

    from .runner import GateRunner

    serve_metrics(settings.gate.metrics_port, settings.metrics_host, f"gate {args.kind}")
    link = open_link(args.kind, settings, lines)
    gate = GateRunner(settings, link, lines=lines, group_id=args.group)
    set_readiness(gate.not_ready)
    stop = threading.Event()
    # SIGINT/SIGTERM: commit what is settled, close the link, leave the group (handlers restored after).
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        counts = gate.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(counts.summary(args.kind), flush=True)
    return 0
