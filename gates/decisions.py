"""A part's decision on its way to the PLC, the bounded queue that holds decisions while the PLC is
away, and the offsets that may be committed once decisions are sent or dropped."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from lineguard.schemas import PartVerdict

PartitionKey = tuple[str, int]  # (topic, partition)


@dataclass
class Decision:
    """What the PLC is told about one part, and where in Kafka it came from."""

    line_id: str
    part_id: str
    reject: bool
    deadline_at_ns: int | None  # None: the line has no verdict deadline, the decision never expires
    verdict: PartVerdict
    partition: PartitionKey
    offset: int
    sequence: int | None = None  # given at the first write attempt; a retry re-sends the same one

    @classmethod
    def of(cls, verdict: PartVerdict, topic: str, partition: int, offset: int) -> Decision:
        return cls(line_id=verdict.line_id, part_id=verdict.part_id, reject=verdict.is_defective,
                   deadline_at_ns=verdict.deadline_at_ns, verdict=verdict,
                   partition=(topic, partition), offset=offset)

    def expired(self, now_ns: int | None = None) -> bool:
        """True once the part has passed the gate: acting on it now would hit the wrong part."""
        if self.deadline_at_ns is None:
            return False
        return (now_ns if now_ns is not None else time.time_ns()) >= self.deadline_at_ns


def timely(verdict: PartVerdict, now_ns: int | None = None) -> bool:
    """A verdict the gate may act on: decided in time upstream and still before its deadline (if it has one)."""
    if verdict.late:
        return False
    return verdict.deadline_at_ns is None or (now_ns if now_ns is not None else time.time_ns()) < verdict.deadline_at_ns


class DecisionQueue:
    """Decisions waiting for the PLC, oldest first, at most ``capacity`` of them.

    The runner stops reading Kafka while the queue is full, so nothing is dropped for room: only
    for time (:meth:`drop_expired`).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Decision] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, decision: Decision) -> None:
        if self.full:
            raise OverflowError("the decision queue is full: stop reading until it drains")
        self._items.append(decision)

    def head(self) -> Decision | None:
        return self._items[0] if self._items else None

    def pop(self) -> Decision:
        return self._items.popleft()

    def drop_expired(self, now_ns: int | None = None) -> list[Decision]:
        """Take out every decision whose deadline has passed, wherever it is in the queue."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        expired = [d for d in self._items if d.expired(now_ns)]
        if expired:
            self._items = deque(d for d in self._items if not d.expired(now_ns))
        return expired

    def drop_partitions(self, partitions: set[PartitionKey]) -> list[Decision]:
        """Take out the decisions of revoked partitions (their new owner reads them again)."""
        gone = [d for d in self._items if d.partition in partitions]
        self._items = deque(d for d in self._items if d.partition not in partitions)
        return gone


class OffsetLedger:
    """Per partition, the offsets read and not yet settled (sent or dropped): what may be committed.

    Decisions settle out of order (an expired one behind a pending one is dropped first), so the
    committable position is the lowest unsettled offset, or one past the highest read when all are.
    """

    def __init__(self) -> None:
        self._pending: dict[PartitionKey, set[int]] = {}
        self._next: dict[PartitionKey, int] = {}  # one past the highest offset read
        self._committed: dict[PartitionKey, int] = {}

    def read(self, partition: PartitionKey, offset: int) -> None:
        self._pending.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def settle(self, partition: PartitionKey, offset: int) -> None:
        pending = self._pending.get(partition)
        if pending is not None:
            pending.discard(offset)

    def position(self, partition: PartitionKey) -> int:
        pending = self._pending.get(partition)
        return min(pending) if pending else self._next[partition]

    def committable(self) -> dict[PartitionKey, int]:
        """Positions that moved since the last :meth:`mark_committed`."""
        out = {}
        for partition in self._next:
            position = self.position(partition)
            if self._committed.get(partition) != position:
                out[partition] = position
        return out

    def mark_committed(self, offsets: dict[PartitionKey, int]) -> None:
        self._committed.update(offsets)

    def uncommit(self, partitions: set[PartitionKey]) -> None:
        """A commit was refused: offer these partitions' positions again."""
        for partition in partitions:
            self._committed.pop(partition, None)

    def unsettled(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def forget(self, partitions: set[PartitionKey]) -> None:
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
