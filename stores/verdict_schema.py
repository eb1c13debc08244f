"""The ClickHouse layout of verdicts, shadow verdicts, part verdicts, labels and model events: the DDL, and the insert columns derived from ``Verdict``.

``verdicts`` is a ``ReplacingMergeTree(scored_at_ns)`` ordered by ``(line_id, product,
camera_id, captured_at_ns, frame_id)``. Everything in that key is fixed by the
frame (a replay carries the same line, product, camera, capture time and id), so a replayed
verdict lands on the same key and merges collapse replays to one row per frame (the latest
``scored_at_ns`` wins). The leading low-cardinality columns let line, product and camera
filters use the primary index; daily partitions serve time ranges.

Until a merge happens duplicates exist on disk. Reads do not use ``FINAL`` (over a year of
rows it merges every part at query time): ``verdicts_latest`` groups by the sort key and
takes each frame's latest verdict with ``argMax(..., scored_at_ns)``; ClickHouse pushes
filters on the key below that grouping, so a query for a week of one camera reads a week of
one camera. ``count_frames`` is ``uniqExact(frame_id)``, replay-safe by construction.

Storage: one timestamp per instant (``captured_at`` / ``scored_at`` are ALIAS columns
computed from the stored ``*_ns`` integers), ``frame_id`` as ``UUID`` (16 bytes instead of
32 characters; read back as the same 32-hex string), codecs on times, sequence and scores,
and a TTL (``sinks.clickhouse.ttl_days``) that drops whole expired parts.

With ``sinks.clickhouse.cluster`` set the DDL runs ``ON CLUSTER``: ``verdicts_local`` is a
``ReplicatedReplacingMergeTree`` and ``verdicts`` a ``Distributed`` table sharded by
``cityHash64(frame_id)``, so every replay of a frame lands on the shard holding it and
replays still collapse.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from typing import Any

from lineguard.config import ConfigError
from lineguard.schemas import Label, PartVerdict, Verdict

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# The insert columns are Verdict's fields, in its field order, so the two cannot drift;
# the DDL below names them again with their ClickHouse types, and the tests check the
# created table's insertable columns against this tuple.
VERDICT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Verdict))

# The one stored instant of each event, as the DateTime64 every query filters on.
CAPTURED_AT = "fromUnixTimestamp64Micro(intDiv(captured_at_ns, 1000), 'UTC')"
SCORED_AT = "fromUnixTimestamp64Micro(intDiv(scored_at_ns, 1000), 'UTC')"


def _frame_uuid(frame_id: str) -> str:
    """A hex UUID frame id in ClickHouse's canonical form; anything else unchanged, so that
    ClickHouse refuses it (CANNOT_PARSE_UUID: a permanent error, dead-lettered)."""
    try:
        return str(uuid.UUID(hex=frame_id))
    except ValueError:
        return frame_id


# Plain Python values for the ClickHouse clients (a numpy float or int subclass would not
# serialise to JSON, and a bool must not pass as an int).
_TO_COLUMN: dict[type, Callable[[Any], Any]] = {
    str: str, int: int, float: float, bool: bool,
    dict: lambda meta: {str(k): str(v) for k, v in meta.items()},  # Map(String, String): values as text
}
_COLUMN_OVERRIDES: dict[str, Callable[[Any], Any]] = {"frame_id": _frame_uuid}


def _column_converters() -> tuple[Callable[[Any], Any], ...]:
    converters = []
    for name in VERDICT_COLUMNS:
        wire_types, _required = Verdict.SPEC[name]
        convert = _COLUMN_OVERRIDES.get(name) or _TO_COLUMN.get(wire_types[0])
        if convert is None:  # fail at import, not at the first insert
            raise TypeError(f"Verdict.{name} ({wire_types[0].__name__}) has no ClickHouse column conversion")
        converters.append(convert)
    return tuple(converters)


_CONVERTERS = _column_converters()


def verdict_row(verdict: Verdict) -> list[Any]:
    """One Verdict as a row in :data:`VERDICT_COLUMNS` order (``None`` stays ``None``)."""
    return [
        _NULL_AS.get(name) if (value := getattr(verdict, name)) is None else convert(value)
        for name, convert in zip(VERDICT_COLUMNS, _CONVERTERS)
    ]


_NULL_AS: dict[str, Any] = {"meta": {}}  # a Map column is not Nullable: no meta is an empty map


# Part verdicts: one row per decision; the views as parallel arrays (SQL can ARRAY JOIN them).
PART_COLUMNS: tuple[str, ...] = (
    "part_id", "line_id", "product", "decided_at_ns", "first_captured_at_ns", "deadline_at_ns", "reason",
    "view_camera_ids", "view_frame_ids", "view_scores", "view_thresholds", "view_defective", "view_late",
    "expected_views", "missing_views", "worst_score_ratio", "worst_camera_id", "is_defective", "late",
    "meta", "schema_version",
)


def part_row(part: PartVerdict) -> list[Any]:
    """One PartVerdict as a row in :data:`PART_COLUMNS` order."""
    views = part.views
    return [
        part.part_id, part.line_id, part.product, int(part.decided_at_ns), int(part.first_captured_at_ns),
        None if part.deadline_at_ns is None else int(part.deadline_at_ns), part.reason,
        [str(v["camera_id"]) for v in views], [str(v.get("frame_id", "")) for v in views],
        [float(v.get("score", 0.0)) for v in views], [float(v.get("threshold", 0.0)) for v in views],
        [bool(v.get("is_defective")) for v in views], [bool(v.get("late")) for v in views],
        list(part.expected_views), list(part.missing_views), float(part.worst_score_ratio), part.worst_camera_id,
        bool(part.is_defective), bool(part.late), {str(k): str(v) for k, v in (part.meta or {}).items()},
        int(part.schema_version),
    ]


_PARTS_DDL = """
    (
        part_id             String,
        line_id             LowCardinality(String),
        product             LowCardinality(String),
        decided_at_ns       Int64,
        first_captured_at_ns Int64 CODEC(DoubleDelta, ZSTD(1)),
        deadline_at_ns      Nullable(Int64),
        reason              LowCardinality(String),
        view_camera_ids     Array(LowCardinality(String)),
        view_frame_ids      Array(String),
        view_scores         Array(Float64),
        view_thresholds     Array(Float64),
        view_defective      Array(Bool),
        view_late           Array(Bool),
        expected_views      Array(LowCardinality(String)),
        missing_views       Array(LowCardinality(String)),
        worst_score_ratio   Float64,
        worst_camera_id     Nullable(String),
        is_defective        Bool,
        late                Bool,
        meta                Map(LowCardinality(String), String),
        schema_version      UInt16,
        first_captured_at   DateTime64(6, 'UTC') ALIAS fromUnixTimestamp64Micro(intDiv(first_captured_at_ns, 1000), 'UTC')
    )"""


def _parts_table(db: str, ttl_days: int | None, cluster: str | None) -> list[str]:
    """A re-decided part (at-least-once) collapses to its latest decision: ReplacingMergeTree(decided_at_ns)
    keyed by the part alone, so a replay that saw other views still lands on the same key."""
    ttl = (f"TTL toDateTime(fromUnixTimestamp64Micro(intDiv(first_captured_at_ns, 1000), 'UTC')) "
           f"+ INTERVAL {int(ttl_days)} DAY\n") if ttl_days else ""
    tail = f"ORDER BY (line_id, product, part_id)\n{ttl}"
    if cluster:
        on = f" ON CLUSTER {cluster}"
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.parts_local{on}\n{_PARTS_DDL}\n"
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/parts', '{{replica}}', "
            f"decided_at_ns)\n{tail}",
            f"CREATE TABLE IF NOT EXISTS {db}.parts{on} AS {db}.parts_local\n"
            f"ENGINE = Distributed({cluster}, {db}, parts_local, cityHash64(part_id))",
        ]
    return [f"CREATE TABLE IF NOT EXISTS {db}.parts\n{_PARTS_DDL}\nENGINE = ReplacingMergeTree(decided_at_ns)\n{tail}"]


# Operators' labels: Label's fields in its order (frame_id as UUID, like the verdicts').
LABEL_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Label))


def label_row(label: Label) -> list[Any]:
    """One Label as a row in :data:`LABEL_COLUMNS` order."""
    return [_frame_uuid(v) if name == "frame_id" else v for name, v in zip(LABEL_COLUMNS, dataclasses.astuple(label))]


_LABELS_DDL = """
    (
        frame_id        UUID,
        line_id         LowCardinality(String),
        camera_id       LowCardinality(String),
        product         LowCardinality(String),
        model_version   LowCardinality(String),
        label           LowCardinality(String),
        labelled_at_ns  Int64,
        operator        LowCardinality(String),
        note            Nullable(String),
        schema_version  UInt16,
        labelled_at     DateTime64(6, 'UTC') ALIAS fromUnixTimestamp64Micro(intDiv(labelled_at_ns, 1000), 'UTC')
    )"""


def _labels_table(db: str, cluster: str | None) -> list[str]:
    """An operator changing their mind (and at-least-once replays) collapse to the frame's latest label:
    ReplacingMergeTree(labelled_at_ns) keyed by the frame. No TTL: labels are the ground truth that
    precision and recall are measured against, and they are few."""
    tail = "ORDER BY (line_id, frame_id)"
    if cluster:
        on = f" ON CLUSTER {cluster}"
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.labels_local{on}\n{_LABELS_DDL}\n"
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/labels', '{{replica}}', "
            f"labelled_at_ns)\n{tail}",
            # sharded like the verdicts, so a frame's label sits beside its verdict
            f"CREATE TABLE IF NOT EXISTS {db}.labels{on} AS {db}.labels_local\n"
            f"ENGINE = Distributed({cluster}, {db}, labels_local, cityHash64(frame_id))",
        ]
    return [f"CREATE TABLE IF NOT EXISTS {db}.labels\n{_LABELS_DDL}\nENGINE = ReplacingMergeTree(labelled_at_ns)\n{tail}"]


def _labels_latest_view(db: str, on_cluster: str) -> str:
    """One row per frame, its latest label (no FINAL, as for the verdicts)."""
    latest = ", ".join(f"argMax(l.{c}, l.labelled_at_ns) AS {c}" for c in (
        "camera_id", "product", "model_version", "label", "operator", "note"))
    return f"""
        CREATE OR REPLACE VIEW {db}.labels_latest{on_cluster} AS
        SELECT frame_id, line_id, max(l.labelled_at_ns) AS labelled_at_ns, {latest}
        FROM {db}.labels AS l
        GROUP BY line_id, frame_id
        """


def check_identifier(name: str, what: str = "database name") -> str:
    """``name`` if it is a safe ClickHouse identifier, else ConfigError."""
    if not _IDENTIFIER.match(name or ""):
        raise ConfigError(f"ClickHouse {what} {name!r} must be letters, digits and '_' (max 64)")
    return name


_COLUMNS_DDL = f"""
    (
        frame_id       UUID,
        line_id        LowCardinality(String),
        camera_id      LowCardinality(String),
        product        LowCardinality(String),
        seq            Int64 CODEC(Delta, ZSTD(1)),
        captured_at_ns Int64 CODEC(DoubleDelta, ZSTD(1)),
        scored_at_ns   Int64 CODEC(DoubleDelta, ZSTD(1)),
        model_name     LowCardinality(String),
        model_version  LowCardinality(String),
        score          Float64 CODEC(Gorilla, ZSTD(1)),
        threshold      Float64 CODEC(Gorilla, ZSTD(1)),
        is_defective   Bool,
        heatmap_key    Nullable(String) CODEC(ZSTD(1)),
        queue_wait_ms  Float64 CODEC(Gorilla, ZSTD(1)),
        inference_ms   Float64 CODEC(Gorilla, ZSTD(1)),
        processor_id   LowCardinality(String),
        part_id        Nullable(String) CODEC(ZSTD(1)),
        meta           Map(LowCardinality(String), String) CODEC(ZSTD(1)),
        late           Nullable(Bool),
        schema_version UInt16,
        -- when the row reached ClickHouse (capture -> row latency); the sink never sends it
        ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
        -- computed on read, never stored: one instant, one column
        captured_at    DateTime64(6, 'UTC') ALIAS {CAPTURED_AT},
        scored_at      DateTime64(6, 'UTC') ALIAS {SCORED_AT}
    )"""

_ADDED_COLUMNS = (
    "part_id Nullable(String) CODEC(ZSTD(1))",
    "meta Map(LowCardinality(String), String) CODEC(ZSTD(1))",
    "late Nullable(Bool)",
)

# captured_at_ns keeps a camera's rows in time order (DoubleDelta needs that). No
# toStartOfHour(captured_at) part: with it ClickHouse (chdb 4.4) fails time-range queries over
# several parts with a LOGICAL_ERROR in key analysis; daily partitions prune the time range.
_SORT_KEY = "(line_id, product, camera_id, captured_at_ns, frame_id)"


def _table_tail(ttl_days: int | None) -> str:
    ttl = ""
    if ttl_days:
        ttl = f"TTL toDateTime({CAPTURED_AT}) + INTERVAL {int(ttl_days)} DAY\n"
    return (f"PARTITION BY toYYYYMMDD({CAPTURED_AT})\nORDER BY {_SORT_KEY}\n{ttl}"
            # whole expired parts are dropped (daily partitions), never rewritten row by row
            "SETTINGS ttl_only_drop_parts = 1")


def _latest_view(db: str, on_cluster: str) -> str:
    """One row per frame, its latest verdict: the replay-safe base of every count."""
    # v.<column>: the stored column, not the alias of the same name below
    latest = ", ".join(f"argMax(v.{c}, v.scored_at_ns) AS {c}" for c in (
        "seq", "model_name", "model_version", "score", "threshold", "is_defective", "heatmap_key",
        "queue_wait_ms", "inference_ms", "processor_id", "part_id", "meta", "late", "schema_version"))
    return f"""
        CREATE OR REPLACE VIEW {db}.verdicts_latest{on_cluster} AS
        SELECT frame_id, line_id, camera_id, product, captured_at_ns,
               max(v.scored_at_ns) AS scored_at_ns,
               {CAPTURED_AT} AS captured_at, {SCORED_AT} AS scored_at, {latest}
        FROM {db}.verdicts AS v
        GROUP BY line_id, product, camera_id, captured_at_ns, frame_id
        """


def _shadow_table(db: str, tail: str, cluster: str | None) -> list[str]:
    """The shadow candidates' verdicts (``lineguard sink shadow``): the verdicts' columns, in a table of their own so
    a shadow row never collapses with the live row of its frame. ``model_version`` is in the key: two candidates
    trialled on one frame keep a row each, and a candidate's replays collapse (latest ``scored_at_ns``)."""
    tail = tail.replace(f"ORDER BY {_SORT_KEY}", f"ORDER BY {_SHADOW_SORT_KEY}")
    if cluster:
        on = f" ON CLUSTER {cluster}"
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.shadow_verdicts_local{on}\n{_COLUMNS_DDL}\n"
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/shadow_verdicts', "
            f"'{{replica}}', scored_at_ns)\n{tail}",
            f"CREATE TABLE IF NOT EXISTS {db}.shadow_verdicts{on} AS {db}.shadow_verdicts_local\n"
            f"ENGINE = Distributed({cluster}, {db}, shadow_verdicts_local, cityHash64(frame_id))",
        ]
    return [f"CREATE TABLE IF NOT EXISTS {db}.shadow_verdicts\n{_COLUMNS_DDL}\n"
            f"ENGINE = ReplacingMergeTree(scored_at_ns)\n{tail}"]


_SHADOW_SORT_KEY = "(line_id, product, camera_id, captured_at_ns, frame_id, model_version)"

# Model promotions, rollbacks and shadow trials (``lineguard models``): who, when, why. Written once by the CLI.
MODEL_EVENT_COLUMNS: tuple[str, ...] = (
    "event_at_ns", "action", "product", "line_id", "version", "previous_version", "by", "reason", "host")

_MODEL_EVENTS_DDL = """
    (
        event_at_ns      Int64,
        action           LowCardinality(String),
        product          LowCardinality(String),
        line_id          LowCardinality(String),
        version          String,
        previous_version String,
        by               String,
        reason           String,
        host             String,
        event_at         DateTime64(6, 'UTC') ALIAS fromUnixTimestamp64Micro(intDiv(event_at_ns, 1000), 'UTC')
    )"""


def _model_events_table(db: str, cluster: str | None) -> list[str]:
    """An audit trail: plain MergeTree, no TTL (few rows, kept for good)."""
    tail = "ORDER BY (product, event_at_ns)"
    if cluster:
        on = f" ON CLUSTER {cluster}"
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.model_events_local{on}\n{_MODEL_EVENTS_DDL}\n"
            f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}/model_events', '{{replica}}')\n{tail}",
            f"CREATE TABLE IF NOT EXISTS {db}.model_events{on} AS {db}.model_events_local\n"
            f"ENGINE = Distributed({cluster}, {db}, model_events_local, cityHash64(product))",
        ]
    return [f"CREATE TABLE IF NOT EXISTS {db}.model_events\n{_MODEL_EVENTS_DDL}\nENGINE = MergeTree\n{tail}"]


def schema_statements(database: str, *, ttl_days: int | None = None, cluster: str | None = None) -> list[str]:
    """The idempotent DDL both backends run, in order (the cluster form when ``cluster`` is set)."""
    db = check_identifier(database)
    tail = _table_tail(ttl_days)
    if cluster:
        name = check_identifier(cluster, "cluster name")
        on = f" ON CLUSTER {name}"
        tables = [
            f"CREATE TABLE IF NOT EXISTS {db}.verdicts_local{on}\n{_COLUMNS_DDL}\n"
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/verdicts', "
            f"'{{replica}}', scored_at_ns)\n{tail}",
            # a frame's replays hash to the shard holding it, where they collapse
            f"CREATE TABLE IF NOT EXISTS {db}.verdicts{on} AS {db}.verdicts_local\n"
            f"ENGINE = Distributed({name}, {db}, verdicts_local, cityHash64(frame_id))",
        ]
    else:
        on = ""
        tables = [f"CREATE TABLE IF NOT EXISTS {db}.verdicts\n{_COLUMNS_DDL}\n"
                  f"ENGINE = ReplacingMergeTree(scored_at_ns)\n{tail}"]
    # Columns added after a table was first created (v1 fields added compatibly): existing stores gain them.
    added = [f"ALTER TABLE {db}.{table}{on} ADD COLUMN IF NOT EXISTS {column} AFTER processor_id"
             for table in (["verdicts_local", "verdicts"] if cluster else ["verdicts"])
             for column in reversed(_ADDED_COLUMNS)]
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}{on}",
        *tables,
        *added,
        *_parts_table(db, ttl_days, cluster.strip() if cluster else None),
        *_labels_table(db, cluster.strip() if cluster else None),
        *_shadow_table(db, tail, cluster.strip() if cluster else None),
        *_model_events_table(db, cluster.strip() if cluster else None),
        _latest_view(db, on),
        _labels_latest_view(db, on),
        # quantileExactInclusive is the usual linear-interpolation quantile (R7,
        # numpy's default), exact rather than sampled.
        f"""
        CREATE OR REPLACE VIEW {db}.verdicts_hourly{on} AS
        SELECT
            line_id,
            product,
            toStartOfHour(captured_at) AS hour,
            count() AS frames,
            countIf(is_defective) AS defective,
            countIf(is_defective) / count() AS defect_rate,
            avg(score) AS avg_score,
            quantileExactInclusive(0.5)(score) AS p50_score,
            quantileExactInclusive(0.95)(score) AS p95_score
        FROM {db}.verdicts_latest
        GROUP BY line_id, product, hour
        """,
    ]
