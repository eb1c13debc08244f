"""Reject gates: each part's decision (``PartVerdict`` on ``lineguard.parts.<line>``) to the line's PLC.

``runner.GateRunner`` owns the consumer loop: it drops decisions that are late, holds the timely
ones in a bounded queue (``decisions``) while the PLC is away, and commits an offset only once
its decision was written or deliberately dropped. Each PLC link is a small ``plc.PlcLink``:
OPC UA (``opcua``) or MQTT (``mqtt``). Run them with ``lineguard gate opcua|mqtt``; the PLC
contract is docs/gate.md.
"""
