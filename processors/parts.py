"""One decision per part: fuse the verdicts of a part's views (cameras, frames) into a PartVerdict.

Pure logic, no Kafka (``part_service`` feeds it). A part is decided when every view the line
expects (``plant.lines.<line>.part_views``) has a verdict, or when its deadline passes
(``part_deadline_ms`` after the first view's capture) with what arrived; missing views are named,
and by default (``missing_view_decision: reject``) make the part defective. A verdict without a
``part_id`` is a part of its own (the frame is the part), decided at once. The part deadline (stop
waiting for views) comes before the line's verdict deadline (``verdict_deadline_ms``: the reject
gate must act by then), so a part missing a view is still decided in time to be rejected.

Deadlines are judged in event time as well as wall time: a part is expired only when the wall
clock is past its deadline **and** the assembler has seen every input partition either caught up
or past the deadline in capture time. Otherwise a backlog (a restart, a slow processor) would cut
parts whose other views are still waiting to be read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from lineguard.config import PlantConfig
from lineguard.schemas import PartVerdict, Verdict, verdict_meta

DECIDED_MEMORY = 100_000  # recently decided part ids: a view arriving after its part was decided is ignored


@dataclass
class _OpenPart:
    part_id: str
    line_id: str
    product: str
    expected: list[str]  # camera ids that complete the part; empty: decided at the deadline
    first_captured_at_ns: int
    decide_by_ns: int  # stop waiting for views: first capture + part deadline
    deadline_at_ns: int | None  # act by: first capture + verdict deadline (None: the line has none)
    views: dict[str, Verdict] = field(default_factory=dict)  # camera_id -> its verdict (latest scored wins)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of every view read


@dataclass
class Decision:
    part: PartVerdict
    positions: list[tuple[int, int]]  # the input offsets this decision settles


class PartAssembler:
    """Collects a line's verdicts by part and decides parts; remembers which input offsets are still open."""

    def __init__(self, plant: PlantConfig, line_id: str, clock: Callable[[], int] = time.time_ns) -> None:
        self.line = plant.line(line_id)
        self.line_id = line_id
        self.clock = clock
        self.open: dict[str, _OpenPart] = {}
        self.decided: OrderedDict[str, None] = OrderedDict()
        self.views_after_decision = 0  # counted, not decided again (dedupe on part_id downstream anyway)
        self._event_time: dict[int, int] = {}  # partition -> latest captured_at_ns read from it
        self._caught_up: dict[int, bool] = {}  # partition -> at its end the last time the reader looked

    def add(self, verdict: Verdict, partition: int, offset: int) -> list[Decision]:
        """Take one verdict; returns the parts it completes (a part of its own without part_id)."""
        self._event_time[partition] = max(self._event_time.get(partition, 0), verdict.captured_at_ns)
        if verdict.part_id is None:
            alone = self._new_part(verdict.frame_id, verdict, partition, offset, expected=[verdict.camera_id])
            return [self._decide(alone, "complete")]
        if verdict.part_id in self.decided:
            self.views_after_decision += 1  # its offset is held by no open part: it is committed with the rest
            return []
        part = self.open.get(verdict.part_id)
        if part is None:
            part = self._new_part(verdict.part_id, verdict, partition, offset, expected=list(self.line.part_views))
            self.open[verdict.part_id] = part
        else:
            part.positions.append((partition, offset))
            known = part.views.get(verdict.camera_id)
            if known is None or verdict.scored_at_ns >= known.scored_at_ns:  # a re-scored view replaces its replay
                part.views[verdict.camera_id] = verdict
        if part.expected and set(part.expected) <= set(part.views):
            del self.open[part.part_id]
            return [self._decide(part, "complete")]
        return []

    def set_caught_up(self, partition: int, caught_up: bool) -> None:
        """The reader tells whether a partition is at its end (nothing more to read for now)."""
        self._caught_up[partition] = caught_up

    def expire(self) -> list[Decision]:
        """Decide the parts whose deadline has passed, in wall time and in every partition's event time."""
        now = self.clock()
        due = [p for p in self.open.values() if now >= p.decide_by_ns and self._all_partitions_past(p.decide_by_ns)]
        for part in due:
            del self.open[part.part_id]
        return [self._decide(part, "deadline") for part in sorted(due, key=lambda p: p.decide_by_ns)]

    def open_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset still held by an undecided part (commit no further)."""
        lowest: dict[int, int] = {}
        for part in self.open.values():
            for partition, offset in part.positions:
                lowest[partition] = min(offset, lowest.get(partition, offset))
        return lowest

    # ---- internals --------------------------------------------------------------------------

    def _all_partitions_past(self, deadline_ns: int) -> bool:
        partitions = self._caught_up.keys() | self._event_time.keys()
        return all(self._caught_up.get(p, False) or self._event_time.get(p, 0) > deadline_ns for p in partitions)

    def _new_part(self, part_id: str, verdict: Verdict, partition: int, offset: int,
                  expected: list[str]) -> _OpenPart:
        return _OpenPart(
            part_id=part_id, line_id=verdict.line_id, product=verdict.product, expected=expected,
            first_captured_at_ns=verdict.captured_at_ns,
            decide_by_ns=verdict.captured_at_ns + self.line.part_wait_ms * 1_000_000,
            deadline_at_ns=(None if self.line.verdict_deadline_ms is None
                            else verdict.captured_at_ns + self.line.verdict_deadline_ms * 1_000_000),
            views={verdict.camera_id: verdict}, positions=[(partition, offset)],
        )

    def _decide(self, part: _OpenPart, reason: str) -> Decision:
        self.decided[part.part_id] = None
        while len(self.decided) > DECIDED_MEMORY:
            self.decided.popitem(last=False)
        views = sorted(part.views.values(), key=lambda v: (v.captured_at_ns, v.camera_id))
        missing = [camera for camera in part.expected if camera not in part.views]
        ratios = {v.camera_id: (v.score / v.threshold if v.threshold > 0 else float("inf") if v.score > 0 else 0.0)
                  for v in views}
        worst = max(ratios, key=ratios.__getitem__)
        decided_at = self.clock()
        meta: dict = {}
        for view in views:
            for key, value in (view.meta or {}).items():
                meta.setdefault(key, value)
        part_verdict = PartVerdict(
            part_id=part.part_id, line_id=part.line_id, product=part.product, decided_at_ns=decided_at,
            first_captured_at_ns=min(v.captured_at_ns for v in views), deadline_at_ns=part.deadline_at_ns,
            reason=reason,
            views=[{"camera_id": v.camera_id, "frame_id": v.frame_id, "score": float(v.score),
                    "threshold": float(v.threshold), "is_defective": bool(v.is_defective), "late": bool(v.late)}
                   for v in views],
            expected_views=list(part.expected), missing_views=missing,
            worst_score_ratio=float(ratios[worst]), worst_camera_id=worst,
            is_defective=any(v.is_defective for v in views)
            or bool(missing and self.line.missing_view_decision == "reject"),
            late=(part.deadline_at_ns is not None and decided_at > part.deadline_at_ns)
            or any(bool(v.late) for v in views),
            meta=verdict_meta(meta) or None,
        )
        return Decision(part_verdict, part.positions)
