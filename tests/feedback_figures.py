"""Operator-feedback figures computed in Python from raw verdicts and labels, the way
docs/analytics.md defines them, for the tests to hold the cookbook's SQL against."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from lineguard.schemas import Label, Verdict

DEFECTIVE_LABELS = ("confirmed_defect", "missed_defect")  # the part is defective; false_alarm: it is good


def latest_by_frame(messages: Iterable, time_of: Callable) -> dict:
    """Each frame's latest message by ``time_of`` (what ReplacingMergeTree keeps)."""
    out: dict = {}
    for m in messages:
        if m.frame_id not in out or time_of(m) > time_of(out[m.frame_id]):
            out[m.frame_id] = m
    return out


def feedback(verdicts: Iterable[Verdict], labels: Iterable[Label], key: Callable[[Verdict], tuple],
             keep: Callable[[Verdict], bool] = lambda v: True) -> dict[tuple, dict]:
    """Per ``key`` of the latest verdicts that ``keep`` keeps: labelled, confirmed, false alarms, missed,
    precision and recall (None without a denominator)."""
    latest_verdicts = latest_by_frame(verdicts, lambda v: v.scored_at_ns)
    latest_labels = latest_by_frame(labels, lambda l: l.labelled_at_ns)
    out: dict[tuple, dict] = defaultdict(lambda: {"labelled": 0, "confirmed": 0, "false_alarms": 0, "missed": 0})
    for frame_id, label in latest_labels.items():
        verdict = latest_verdicts.get(frame_id)
        if verdict is None or not keep(verdict):
            continue
        row = out[key(verdict)]
        truly_defective = label.label in DEFECTIVE_LABELS
        row["labelled"] += 1
        row["confirmed"] += verdict.is_defective and truly_defective
        row["false_alarms"] += verdict.is_defective and not truly_defective
        row["missed"] += (not verdict.is_defective) and truly_defective
    for row in out.values():
        flagged, defective = row["confirmed"] + row["false_alarms"], row["confirmed"] + row["missed"]
        row["precision"] = row["confirmed"] / flagged if flagged else None
        row["recall"] = row["confirmed"] / defective if defective else None
    return dict(out)


def label_for(verdict: Verdict, label: str, labelled_at_ns: int, operator: str = "op-1") -> Label:
    return Label(frame_id=verdict.frame_id, line_id=verdict.line_id, camera_id=verdict.camera_id,
                 product=verdict.product, model_version=verdict.model_version, label=label,
                 labelled_at_ns=labelled_at_ns, operator=operator)


def operator_labels(verdicts: Iterable[Verdict], base_ns: int) -> list[Label]:
    """Deterministic labels on about half the defective and a sample of the passed verdicts, with some
    frames relabelled later (an operator changing their mind: the later label must win)."""
    labels = []
    for i, v in enumerate(sorted(latest_by_frame(verdicts, lambda v: v.scored_at_ns).values(), key=lambda v: v.frame_id)):
        at = base_ns + i * 1_000_000
        if v.is_defective and i % 2 == 0:
            labels.append(label_for(v, "false_alarm" if i % 3 == 0 else "confirmed_defect", at))
            if i % 5 == 0:  # changed their mind
                labels.append(label_for(v, "confirmed_defect" if i % 3 == 0 else "false_alarm", at + 10**9, "op-2"))
        elif not v.is_defective and i % 7 == 0:
            labels.append(label_for(v, "missed_defect", at))
    return labels
