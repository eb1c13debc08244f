"""The SQL cookbook: named, parametrised ClickHouse queries over the verdicts.

Each :class:`NamedQuery` is plain SQL with ClickHouse ``{name:Type}`` placeholders
(bound by the server, never pasted into the text) and ``{db}`` for the database.
Every query reads ``verdicts_latest`` (one row per frame, its latest verdict; no ``FINAL``),
so replayed verdicts count once. Times are UTC and bound as microseconds since the epoch,
which both backends (chdb and clickhouse-connect) pass through unchanged.

Use them from Python::

    from lineguard.analytics import cookbook
    rows = cookbook.run(store, "worst_cameras", since=monday, limit=5)

or print the SQL with ``lineguard report --sql NAME`` to paste into a client.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lineguard.config import parse_shift
from lineguard.stores import VerdictStore

UTC = dt.timezone.utc
DEFAULT_SHIFTS = ("06-14", "14-22", "22-06")

_RANGE = (
    "captured_at >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC') "
    "AND captured_at < fromUnixTimestamp64Micro({until_us:Int64}, 'UTC')"
)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    description: str
    sql: str
    # Python-side parameter name -> ClickHouse type; datetimes become <name>_us Int64.
    params: dict[str, str] = field(default_factory=dict)
    defaults: Callable[[], dict[str, Any]] = dict

    def render(self, database: str) -> str:
        return self.sql.replace("{db}", database)


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def start_of_week(moment: dt.datetime | None = None) -> dt.datetime:
    """Monday 00:00 UTC of ``moment``'s ISO week."""
    moment = (moment or now()).astimezone(UTC)
    day = moment.date() - dt.timedelta(days=moment.weekday())
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)


def micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value.astimezone(UTC) - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class Shift:
    name: str
    start_min: int  # minute of the day, UTC
    end_min: int    # exclusive; end <= start means the shift runs past midnight

    @property
    def overnight(self) -> bool:
        return self.end_min <= self.start_min

    def contains(self, minute_of_day: int) -> bool:
        if self.overnight:
            return minute_of_day >= self.start_min or minute_of_day < self.end_min
        return self.start_min <= minute_of_day < self.end_min


def parse_shifts(specs: Sequence[str]) -> list[Shift]:
    """``["06-14", "14-22", "22-06"]`` -> shifts named by their spec (validated by the config model)."""
    from pydantic import ValidationError

    from lineguard.config import AnalyticsConfig

    try:
        AnalyticsConfig(shifts=list(specs))  # the config's rule: they cover the day exactly once
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return [Shift(spec.strip(), *parse_shift(spec)) for spec in specs]


def _last_days(days: int) -> Callable[[], dict[str, Any]]:
    def defaults() -> dict[str, Any]:
        end = now()
        return {"since": end - dt.timedelta(days=days), "until": end + dt.timedelta(seconds=1)}
    return defaults


QUERIES: dict[str, NamedQuery] = {}


def _register(query: NamedQuery) -> NamedQuery:
    QUERIES[query.name] = query
    return query


_register(NamedQuery(
    name="defect_rate_by_shift",
    title="Defect rate per line per shift",
    description="Frames, defective frames and defect rate per line, shift date and shift. A shift that "
                "runs past midnight belongs to the date it started on.",
    sql=f"""
WITH toHour(captured_at) * 60 + toMinute(captured_at) AS minute_of_day,
     arrayFirstIndex((s, e) -> if(s < e, minute_of_day >= s AND minute_of_day < e,
                                  minute_of_day >= s OR minute_of_day < e),
                     {{shift_starts:Array(UInt16)}}, {{shift_ends:Array(UInt16)}}) AS shift_index
SELECT line_id,
       if({{shift_ends:Array(UInt16)}}[shift_index] <= {{shift_starts:Array(UInt16)}}[shift_index]
          AND minute_of_day < {{shift_ends:Array(UInt16)}}[shift_index],
          toDate(captured_at) - 1, toDate(captured_at)) AS shift_date,
       {{shift_names:Array(String)}}[shift_index] AS shift,
       count() AS frames,
       countIf(is_defective) AS defective,
       defective / frames AS defect_rate
FROM {{db}}.verdicts_latest
WHERE {_RANGE} AND shift_index > 0
GROUP BY line_id, shift_date, shift_index, shift
ORDER BY line_id, shift_date, shift_index
""",
    params={"since": "DateTime", "until": "DateTime", "shifts": "shifts"},
    defaults=lambda: {**_last_days(7)(), "shifts": list(DEFAULT_SHIFTS)},
))

_register(NamedQuery(
    name="worst_cameras",
    title="Worst cameras this week",
    description="Cameras by defect rate (then defect count) since Monday 00:00 UTC, at least "
                "min_frames frames each.",
    sql=f"""
SELECT line_id, camera_id,
       count() AS frames,
       countIf(is_defective) AS defective,
       defective / frames AS defect_rate,
       avg(score) AS mean_score
FROM {{db}}.verdicts_latest
WHERE {_RANGE}
GROUP BY line_id, camera_id
HAVING frames >= {{min_frames:UInt32}}
ORDER BY defect_rate DESC, defective DESC, line_id, camera_id
LIMIT {{limit:UInt32}}
""",
    params={"since": "DateTime", "until": "DateTime", "min_frames": "UInt32", "limit": "UInt32"},
    defaults=lambda: {"since": start_of_week(), "until": now() + dt.timedelta(seconds=1),
                      "min_frames": 1, "limit": 10},
))

_register(NamedQuery(
    name="defect_pareto_by_product",
    title="Pareto of defects by product",
    description="Products by defect count with their share of all defects and the cumulative share "
                "(the 80/20 view). line_id '' means every line.",
    sql=f"""
SELECT product, frames, defective, defect_rate,
       defective / greatest(sum(defective) OVER (), 1) AS share,
       sum(defective) OVER (ORDER BY defective DESC, product ASC
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
           / greatest(sum(defective) OVER (), 1) AS cumulative_share
FROM
(
    SELECT product, count() AS frames, countIf(is_defective) AS defective, defective / frames AS defect_rate
    FROM {{db}}.verdicts_latest
    WHERE {_RANGE} AND ({{line_id:String}} = '' OR line_id = {{line_id:String}})
    GROUP BY product
)
ORDER BY defective DESC, product ASC
""",
    params={"since": "DateTime", "until": "DateTime", "line_id": "String"},
    defaults=lambda: {**_last_days(7)(), "line_id": ""},
))

# Score distribution on each side of a change, and the PSI of "after" against "before"
# on the deciles of "before". {side} is the expression that names a frame's side.
_SHIFT_SQL = """
SELECT side, frames, defective, defect_rate, mean_score, p50, p90, p99, observed,
       if(side = 'before', 0.,
          arraySum(arrayMap((o, e) -> (greatest(o, {floor}) - greatest(e, {floor}))
                                      * log(greatest(o, {floor}) / greatest(e, {floor})),
                            observed, anyIf(observed, side = 'before') OVER ()))) AS psi_vs_before
FROM
(
    WITH ({side}) AS side,
         (SELECT quantilesExactInclusive(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)(score)
          FROM {db}.verdicts_latest
          WHERE line_id = {line_id:String} AND ({product:String} = '' OR product = {product:String})
            AND {range} AND ({side}) = 'before') AS cuts
    SELECT side,
           count() AS frames,
           countIf(is_defective) AS defective,
           defective / frames AS defect_rate,
           avg(score) AS mean_score,
           quantilesExactInclusive(0.5, 0.9, 0.99)(score) AS q,
           q[1] AS p50, q[2] AS p90, q[3] AS p99,
           -- decile bins of the "before" scores: bin k holds cuts[k-1] <= score < cuts[k]
           groupArray(arrayCount(c -> c <= score, cuts) + 1) AS bins,
           arrayMap(k -> countEqual(bins, k) / frames, range(1, length(cuts) + 2)) AS observed
    FROM {db}.verdicts_latest
    WHERE line_id = {line_id:String} AND ({product:String} = '' OR product = {product:String})
      AND {range} AND side IN ('before', 'after')
    GROUP BY side
)
ORDER BY side = 'after'
"""


def _register_shift(name: str, title: str, frames: str, side: str, split_params: dict[str, str]) -> None:
    """A score-shift query: ``side`` names each frame's side of the change, ``split_params`` bind it."""
    from .schema import PSI_FLOOR

    _register(NamedQuery(
        name=name,
        title=title,
        description=f"On one line (and product, '' = all), the score distribution of frames {frames}, "
                    "and the PSI of 'after' on the deciles of 'before'.",
        sql=(_SHIFT_SQL.replace("{side}", side).replace("{range}", _RANGE)
             .replace("{floor}", repr(PSI_FLOOR))),
        params={"line_id": "String", "product": "String", **split_params, "since": "DateTime",
                "until": "DateTime"},
        defaults=lambda: {**_last_days(30)(), "product": ""},
    ))


_register_shift(
    "score_shift_at", "Score distribution before/after a moment (process change)",
    "captured before and after `at`",
    "if(captured_at < fromUnixTimestamp64Micro({at_us:Int64}, 'UTC'), 'before', 'after')",
    {"at": "DateTime"})
_register_shift(
    "score_shift_by_version", "Score distribution of two model versions (model change)",
    "scored by before_version and by after_version",
    "multiIf(model_version = {before_version:String}, 'before', "
    "model_version = {after_version:String}, 'after', '')",
    {"before_version": "String", "after_version": "String"})


_register(NamedQuery(
    name="drift_psi",
    title="Score drift per line against the calibration reference",
    description="Per line, period (grain 'hour' or 'day') and model version: the frames judged normal "
                "and the PSI of their score distribution against the model's calibration histogram.",
    sql="""
SELECT line_id, period, model_name, model_version, frames, psi
FROM
(
    SELECT line_id, toDateTime(hour, 'UTC') AS period, model_name, model_version, frames, psi, 'hour' AS grain
    FROM {db}.score_drift_hourly
    UNION ALL
    SELECT line_id, toDateTime(day, 'UTC') AS period, model_name, model_version, frames, psi, 'day' AS grain
    FROM {db}.score_drift_daily
)
WHERE grain = {grain:String}
  AND period >= toStartOfInterval(fromUnixTimestamp64Micro({since_us:Int64}, 'UTC'),
                                  if({grain:String} = 'day', INTERVAL 1 DAY, INTERVAL 1 HOUR))
  AND period < fromUnixTimestamp64Micro({until_us:Int64}, 'UTC')
  AND ({line_id:String} = '' OR line_id = {line_id:String})
ORDER BY line_id, period, model_name, model_version
""",
    params={"since": "DateTime", "until": "DateTime", "grain": "String", "line_id": "String"},
    defaults=lambda: {**_last_days(7)(), "grain": "day", "line_id": ""},
))

_register(NamedQuery(
    name="defect_rate_by_line",
    title="Defect rate per line over time",
    description="Per line and period (grain 'hour' or 'day'): frames, defective frames, defect rate.",
    sql=f"""
SELECT line_id,
       if({{grain:String}} = 'day', toStartOfDay(captured_at), toStartOfHour(captured_at)) AS period,
       count() AS frames,
       countIf(is_defective) AS defective,
       defective / frames AS defect_rate
FROM {{db}}.verdicts_latest
WHERE {_RANGE} AND ({{line_id:String}} = '' OR line_id = {{line_id:String}})
GROUP BY line_id, period
ORDER BY line_id, period
""",
    params={"since": "DateTime", "until": "DateTime", "grain": "String", "line_id": "String"},
    defaults=lambda: {**_last_days(7)(), "grain": "day", "line_id": ""},
))

_register(NamedQuery(
    name="line_models",
    title="Model version per line",
    description="Per line: the model and version of its latest verdict, when that was, and the "
                "frames and defect rate since `since`.",
    sql=f"""
SELECT line_id,
       argMax(model_name, captured_at) AS model_name,
       argMax(model_version, captured_at) AS model_version,
       max(captured_at) AS last_frame_at,
       count() AS frames,
       countIf(is_defective) AS defective,
       defective / frames AS defect_rate
FROM {{db}}.verdicts_latest
WHERE {_RANGE}
GROUP BY line_id
ORDER BY line_id
""",
    params={"since": "DateTime", "until": "DateTime"},
    defaults=_last_days(7),
))

_register(NamedQuery(
    name="latest_defects",
    title="Latest defective frames",
    description="The most recent defective frames (with their heatmap object keys), newest first.",
    sql=f"""
SELECT frame_id, line_id, camera_id, product, captured_at, model_version, score, threshold, heatmap_key
FROM {{db}}.verdicts_latest
WHERE is_defective AND {_RANGE} AND ({{line_id:String}} = '' OR line_id = {{line_id:String}})
ORDER BY captured_at DESC, toString(frame_id)  -- hex order, as the ids read back
LIMIT {{limit:UInt32}}
""",
    params={"since": "DateTime", "until": "DateTime", "line_id": "String", "limit": "UInt32"},
    defaults=lambda: {**_last_days(7)(), "line_id": "", "limit": 12},
))


# Operator feedback. A label is a judgement of the part, whatever verdict it was given on:
# confirmed_defect and missed_defect say the part is defective, false_alarm that it is good. Set
# against the frame's latest verdict (a re-scored frame keeps its label), that gives
#   confirmed    = labelled defective, verdict defective (true positive)
#   false_alarms = labelled good,      verdict defective (false positive)
#   missed       = labelled defective, verdict passed    (false negative)
# precision = confirmed / (confirmed + false_alarms), recall = confirmed / (confirmed + missed);
# NULL where the denominator is 0. Only labelled frames count, and passed frames are labelled only
# from a sample (passed_sample), so recall is an estimate from that sample -- see docs/analytics.md.
_FEEDBACK_SQL = """
SELECT {dims},
       count() AS labelled,
       countIf(is_defective AND truly_defective) AS confirmed,
       countIf(is_defective AND NOT truly_defective) AS false_alarms,
       countIf(NOT is_defective AND truly_defective) AS missed,
       if(confirmed + false_alarms > 0, confirmed / (confirmed + false_alarms), NULL) AS precision,
       if(confirmed + missed > 0, confirmed / (confirmed + missed), NULL) AS recall
FROM
(
    SELECT v.line_id AS line_id, v.camera_id AS camera_id, v.model_name AS model_name,
           v.model_version AS model_version, v.is_defective AS is_defective,
           l.label IN ('confirmed_defect', 'missed_defect') AS truly_defective
    FROM
    (
        SELECT frame_id, line_id, camera_id, model_name, model_version, is_defective
        FROM {db}.verdicts_latest
        WHERE {range} AND ({line_id:String} = '' OR line_id = {line_id:String})
    ) AS v
    INNER JOIN {db}.labels_latest AS l ON l.frame_id = v.frame_id
)
GROUP BY {dims}
ORDER BY {dims}
"""


def _register_feedback(dimension: str, dims: str) -> None:
    _register(NamedQuery(
        name=f"feedback_by_{dimension}",
        title=f"Precision and recall from operator labels per {dimension.replace('_', ' ')}",
        description=f"Per {dims}: labelled frames (captured in the window), confirmed defects, false alarms, "
                    "missed defects, precision and recall (NULL without a label to judge by). Recall counts only "
                    "the missed defects found in the sampled passed parts. line_id '' means every line.",
        sql=_FEEDBACK_SQL.replace("{dims}", dims).replace("{range}", _RANGE),
        params={"since": "DateTime", "until": "DateTime", "line_id": "String"},
        defaults=lambda: {**_last_days(30)(), "line_id": ""},
    ))


_register_feedback("line", "line_id")
_register_feedback("camera", "line_id, camera_id")
_register_feedback("model_version", "line_id, model_name, model_version")

_register(NamedQuery(
    name="passed_sample",
    title="A sample of passed frames for operators to review",
    description="Up to `limit` passed frames of one line (or '' for all) captured in the window, chosen by a hash "
                "of the frame id: an unbiased sample that stays the same from one page load to the next. "
                "`label` is the frame's latest operator label, '' if none.",
    sql=f"""
SELECT v.frame_id AS frame_id, v.line_id AS line_id, v.camera_id AS camera_id, v.product AS product,
       v.captured_at AS captured_at, v.model_version AS model_version, v.score AS score,
       v.threshold AS threshold, l.label AS label
FROM
(
    SELECT frame_id, line_id, camera_id, product, captured_at, model_version, score, threshold
    FROM {{db}}.verdicts_latest
    WHERE NOT is_defective AND {_RANGE} AND ({{line_id:String}} = '' OR line_id = {{line_id:String}})
    ORDER BY cityHash64(toString(frame_id)), toString(frame_id)
    LIMIT {{limit:UInt32}}
) AS v
LEFT JOIN {{db}}.labels_latest AS l ON l.frame_id = v.frame_id
ORDER BY cityHash64(toString(frame_id)), toString(frame_id)
""",
    params={"since": "DateTime", "until": "DateTime", "line_id": "String", "limit": "UInt32"},
    defaults=lambda: {**_last_days(1)(), "line_id": "", "limit": 12},
))


def bind(query: NamedQuery, values: dict[str, Any]) -> dict[str, Any]:
    """Python values -> the ClickHouse parameters of ``query`` (datetimes as *_us, shifts as arrays)."""
    merged = {**query.defaults(), **{k: v for k, v in values.items() if v is not None}}
    unknown = set(values) - set(query.params)
    if unknown:
        raise ValueError(f"{query.name}: unknown parameter(s) {sorted(unknown)}; takes {sorted(query.params)}")
    out: dict[str, Any] = {}
    for name, kind in query.params.items():
        if name not in merged:
            raise ValueError(f"{query.name}: parameter {name!r} is required")
        value = merged[name]
        if kind == "DateTime":
            out[f"{name}_us"] = micros(value)
        elif kind == "shifts":
            shifts = parse_shifts(value)
            out["shift_names"] = [s.name for s in shifts]
            out["shift_starts"] = [s.start_min for s in shifts]
            out["shift_ends"] = [s.end_min for s in shifts]
        elif kind == "UInt32":
            out[name] = int(value)
        else:
            out[name] = str(value)
    return out


def run(store: VerdictStore, name: str, **values: Any) -> list[dict[str, Any]]:
    """Run cookbook query ``name`` with ``values`` (missing ones take the query's defaults)."""
    try:
        query = QUERIES[name]
    except KeyError:
        raise ValueError(f"no cookbook query {name!r}; there are {sorted(QUERIES)}") from None
    return store.query(query.render(store.database), bind(query, values))
