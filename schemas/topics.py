"""Topic names: one topic per line for frames, verdicts, heatmaps, part verdicts and labels; one dead-letter topic.

Per-line verdict topics let a plant grant an MES client exactly one line
(a prefixed ACL on ``lineguard.verdicts.<line_id>``).
"""

from __future__ import annotations

import re

PREFIX = "lineguard"
DEADLETTER = f"{PREFIX}.deadletter"
# Compacted; one record per dead letter re-injected by `lineguard replay`, keyed by the letter's offset.
REPLAY_MARKERS = f"{PREFIX}.replay-markers"
KINDS = ("frames", "verdicts", "heatmaps", "parts", "labels", "shadow")  # the per-line topic families
_LINE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_line_id(line_id: str) -> str:
    if not _LINE_ID.match(line_id or ""):
        raise ValueError(f"line id {line_id!r} must be 1-64 characters of letters, digits, '_' or '-'")
    return line_id


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; choose from {KINDS}")
    return kind


def per_line(kind: str, line_id: str) -> str:
    """``lineguard.<kind>.<line_id>`` for a kind in :data:`KINDS`."""
    return f"{PREFIX}.{_check_kind(kind)}.{check_line_id(line_id)}"


def pattern(kind: str) -> str:
    """The regex of every line's topic of ``kind`` (a regex subscription follows lines created later)."""
    return rf"^{re.escape(PREFIX)}\.{_check_kind(kind)}\..+$"


def frames(line_id: str) -> str:
    return per_line("frames", line_id)


def verdicts(line_id: str) -> str:
    return per_line("verdicts", line_id)


def heatmaps(line_id: str) -> str:
    return per_line("heatmaps", line_id)


def parts(line_id: str) -> str:
    """One PartVerdict per part, keyed by part_id: what a reject gate and an MES wanting per-part decisions read."""
    return per_line("parts", line_id)


def labels(line_id: str) -> str:
    """Operators' labels of the line's verdicts (confirmed defect, false alarm, missed defect), keyed by frame_id."""
    return per_line("labels", line_id)


def shadow(line_id: str) -> str:
    """Verdicts of the line's shadow candidate model (``lineguard models shadow``), keyed by camera: never
    on the verdict topic, so no MES client sees them; ``lineguard sink shadow`` writes them to ClickHouse."""
    return per_line("shadow", line_id)


def line_of(topic: str) -> str:
    """The line id of a per-line topic name."""
    parts = topic.split(".", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        raise ValueError(f"{topic!r} is not a per-line lineguard topic")
    return parts[2]


def heatmap_key(line_id: str, frame_id: str, captured_at_ns: int) -> str:
    """Object key of a frame's heatmap: ``<line>/<yyyy>/<mm>/<dd>/<frame_id>.png`` (UTC date)."""
    import datetime as _dt

    day = _dt.datetime.fromtimestamp(captured_at_ns / 1e9, tz=_dt.timezone.utc)
    return f"{line_id}/{day:%Y/%m/%d}/{frame_id}.png"


def archive_key(line_id: str, frame_id: str, captured_at_ns: int, ext: str) -> str:
    """Object key of an archived frame: ``<line>/archive/<yyyy>/<mm>/<dd>/<frame_id>.<ext>`` (UTC date).

    Under the line, as heatmaps are, so the heatmap sink's key check accepts it and a line's objects
    can be granted or removed together."""
    import datetime as _dt

    day = _dt.datetime.fromtimestamp(captured_at_ns / 1e9, tz=_dt.timezone.utc)
    return f"{line_id}/archive/{day:%Y/%m/%d}/{frame_id}.{ext}"
