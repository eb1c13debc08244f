"""The ClickHouse layout of verdicts: the DDL, and the insert columns derived from ``Verdict``.

``verdicts`` is a ``ReplacingMergeTree(scored_at)`` ordered by ``(line_id, captured_at,
frame_id)``: a frame's line and capture time never change, so a replayed verdict lands on
the same sorting key and merges collapse replays to one row per frame (the latest
``scored_at`` wins). Until a merge happens duplicates exist on disk, so every read that
counts must use ``FINAL`` -- ``VerdictStore.count_frames()`` and ``verdicts_hourly`` do.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from lineguard.config import ConfigError
from lineguard.schemas import Verdict

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# The insert columns are Verdict's fields, in its field order, so the two cannot drift;
# the DDL below names them again with their ClickHouse types, and the tests check the
# created table's insertable columns against this tuple. captured_at / scored_at are
# MATERIALIZED from the ns integers so they can never disagree with them (and are
# therefore left out of ``SELECT *``; name them explicitly).
VERDICT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Verdict))

# Plain Python values for the ClickHouse clients (a numpy float or int subclass would not
# serialise to JSON, and a bool must not pass as an int).
_TO_COLUMN: dict[type, Callable[[Any], Any]] = {str: str, int: int, float: float, bool: bool}


def _column_converters() -> tuple[Callable[[Any], Any], ...]:
    converters = []
    for name in VERDICT_COLUMNS:
        wire_types, _required = Verdict.SPEC[name]
        convert = _TO_COLUMN.get(wire_types[0])
        if convert is None:  # fail at import, not at the first insert
            raise TypeError(f"Verdict.{name} ({wire_types[0].__name__}) has no ClickHouse column conversion")
        converters.append(convert)
    return tuple(converters)


_CONVERTERS = _column_converters()


def verdict_row(verdict: Verdict) -> list[Any]:
    """One Verdict as a row in :data:`VERDICT_COLUMNS` order (``None`` stays ``None``)."""
    return [
        None if (value := getattr(verdict, name)) is None else convert(value)
        for name, convert in zip(VERDICT_COLUMNS, _CONVERTERS)
    ]


def check_identifier(name: str) -> str:
    """``name`` if it is a safe ClickHouse database name, else ConfigError."""
    if not _IDENTIFIER.match(name or ""):
        raise ConfigError(f"ClickHouse database name {name!r} must be letters, digits and '_' (max 64)")
    return name


def schema_statements(database: str) -> list[str]:
    """The idempotent DDL both backends run, in order."""
    db = check_identifier(database)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
        CREATE TABLE IF NOT EXISTS {db}.verdicts
        (
            frame_id       String,
            line_id        LowCardinality(String),
            camera_id      LowCardinality(String),
            product        LowCardinality(String),
            seq            Int64,
            captured_at_ns Int64,
            scored_at_ns   Int64,
            captured_at    DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(intDiv(captured_at_ns, 1000), 'UTC'),
            scored_at      DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(intDiv(scored_at_ns, 1000), 'UTC'),
            model_name     LowCardinality(String),
            model_version  LowCardinality(String),
            score          Float64,
            threshold      Float64,
            is_defective   Bool,
            heatmap_key    Nullable(String),
            queue_wait_ms  Float64,
            inference_ms   Float64,
            processor_id   LowCardinality(String),
            schema_version UInt16,
            -- when the sink wrote the row (differs between replays; not part of the key)
            ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree(scored_at)
        PARTITION BY toYYYYMMDD(captured_at)
        ORDER BY (line_id, captured_at, frame_id)
        """,
        # FINAL: the figures stay right while replayed duplicates are not merged yet.
        # quantileExactInclusive is the usual linear-interpolation quantile (R7,
        # numpy's default), exact rather than sampled.
        f"""
        CREATE VIEW IF NOT EXISTS {db}.verdicts_hourly AS
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
        FROM {db}.verdicts FINAL
        GROUP BY line_id, product, hour
        """,
    ]
