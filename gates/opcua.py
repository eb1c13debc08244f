"""The OPC UA link: per line, the gate writes the part id (String), the reject bit (Boolean) and the
decision counter (Int32) in one Write request, counter last, and a heartbeat counter (Int32).

asyncua is asynchronous and the runner is not: the client lives on its own event loop in a
thread, and every call waits for its result at most ``gate.opcua.timeout_s``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from asyncua import Client, Node, ua

from lineguard.config import OpcUaGateConfig

from .decisions import Decision
from .plc import PlcUnavailable, SequenceCounter


class _EventLoopThread:
    """An asyncio loop on a daemon thread, for calling a coroutine API from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout_s), self.loop)
        return future.result(timeout_s + 1.0)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2.0)


@dataclass(frozen=True)
class LineNodes:
    """The PLC variables of one line."""

    part_id: Node
    reject: Node
    sequence: Node
    heartbeat: Node

    @classmethod
    def of(cls, client: Client, cfg: OpcUaGateConfig, line_id: str) -> LineNodes:
        def node(template: str) -> Node:
            return client.get_node(template.format(line=line_id))
        return cls(node(cfg.part_id_node), node(cfg.reject_node), node(cfg.sequence_node), node(cfg.heartbeat_node))


def _value(value: Any, variant_type: ua.VariantType) -> ua.DataValue:
    # No source or server timestamp: several PLC servers (e.g. Siemens S7-1500) refuse writes that carry one.
    return ua.DataValue(ua.Variant(value, variant_type))


class OpcUaLink:
    """One OPC UA session to the PLC's server (SecurityPolicy None; anonymous or username/password)."""

    kind = "opcua"

    def __init__(self, cfg: OpcUaGateConfig, lines: list[str]) -> None:
        self.cfg = cfg
        self.lines = list(lines)
        self._loop = _EventLoopThread("gate-opcua")
        self._client: Client | None = None
        self._nodes: dict[str, LineNodes] = {}
        self._sequences = SequenceCounter()

    def connect(self) -> None:
        client = Client(self.cfg.endpoint, timeout=self.cfg.timeout_s)
        if self.cfg.username:
            client.set_user(self.cfg.username)
            client.set_password(self.cfg.secret() or "")
        try:
            self._call(client.connect())
            self._client = client
            self._nodes = {line: LineNodes.of(client, self.cfg, line) for line in self.lines}
            for line, nodes in self._nodes.items():
                # Continue above the counter the PLC holds, so a restarted gate's first decision is new to it.
                self._sequences.follow(line, self._call(nodes.sequence.read_value()))
        except PlcUnavailable:
            self.close()
            raise

    def write(self, decision: Decision) -> None:
        nodes = self._nodes[decision.line_id]
        if decision.sequence is None:
            decision.sequence = self._sequences.next(decision.line_id)
        self._write({
            nodes.part_id: _value(decision.part_id, ua.VariantType.String),
            nodes.reject: _value(decision.reject, ua.VariantType.Boolean),
            nodes.sequence: _value(decision.sequence, ua.VariantType.Int32),  # last: the PLC's trigger
        })

    def heartbeat(self, count: int) -> None:
        value = count % (SequenceCounter.MAX + 1)
        self._write({nodes.heartbeat: _value(value, ua.VariantType.Int32) for nodes in self._nodes.values()})

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                self._call(client.disconnect())
            except PlcUnavailable:
                pass  # the server is gone; the socket is closed with the client

    def stop(self) -> None:
        """Close and end the event loop thread (the link is not used again)."""
        self.close()
        self._loop.stop()

    def _write(self, values: dict[Node, ua.DataValue]) -> None:
        """One Write request, in order; every value must be accepted."""
        if self._client is None:
            raise PlcUnavailable("not connected")
        nodeids = [node.nodeid for node in values]
        results = self._call(self._client.uaclient.write_attributes(nodeids, list(values.values()),
                                                                    ua.AttributeIds.Value))
        for nodeid, status in zip(nodeids, results):
            if not status.is_good():
                raise PlcUnavailable(f"the server refused the write of {nodeid.to_string()}: {status.name}")

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self._loop.run(coro, self.cfg.timeout_s)
        except Exception as exc:  # noqa: BLE001 - socket, timeout and OPC UA status errors alike
            raise PlcUnavailable(f"OPC UA {self.cfg.endpoint}: {type(exc).__name__}: {exc}") from exc
