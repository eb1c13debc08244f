"""What the runner needs of a PLC link, whichever protocol carries it."""

from __future__ import annotations

from typing import Protocol

from .decisions import Decision


class PlcUnavailable(Exception):
    """The PLC (or its broker) cannot be reached or did not confirm: reconnect, then retry."""


class PlcLink(Protocol):
    """One connection to the PLC side. Every call is bounded in time and raises
    :class:`PlcUnavailable` when the other side is away; the runner then closes the link and
    reconnects with back-off."""

    kind: str  # "opcua" or "mqtt": the metrics' label and the default consumer group's suffix

    def connect(self) -> None:
        """Open the connection."""

    def write(self, decision: Decision) -> None:
        """Hand one decision over; return only once the other side confirmed it. Gives the decision
        its ``sequence`` at the first attempt; a retry after a reconnect sends the same one."""

    def heartbeat(self, count: int) -> None:
        """Tell the PLC the gate is alive (``count`` rises by one each time)."""

    def close(self) -> None:
        """Drop the connection (never raises); :meth:`connect` may be called again."""

    def stop(self) -> None:
        """Close for good, releasing threads."""


class SequenceCounter:
    """The per-line decision counter the PLC watches: +1 per decision, skipping 0 (a PLC's
    power-on value), and after a wrap at the Int32 maximum it starts again at 1."""

    MAX = 2**31 - 1

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def follow(self, line_id: str, seen: int) -> None:
        """Continue above ``seen`` (the value the PLC holds now, e.g. after a gate restart)."""
        if isinstance(seen, int) and seen > self._last.get(line_id, 0):
            self._last[line_id] = seen

    def next(self, line_id: str) -> int:
        value = self._last.get(line_id, 0) + 1
        if value > self.MAX:
            value = 1
        self._last[line_id] = value
        return value
