"""Shadow trials: a line's shadow candidate set against its live model, frame by frame (``lineguard models compare``).

Both sides come from ClickHouse: the live verdicts from ``verdicts_latest`` (one row per frame), the
candidate's from ``shadow_verdicts`` (one row per frame and candidate version, its latest replay), joined
on ``frame_id``. Per candidate version: the agreement table (both pass, both defective, live-only
defective, shadow-only defective), the agreement rate, quantiles of both sides' scores, and where operators
labelled frames (``labels_latest``) precision and recall of both, with the cookbook's meaning of a label
(confirmed_defect and missed_defect: the part is defective; false_alarm: it is good). Labels are of the
part, so they judge the candidate as fairly as the live model; only labelled frames count.
"""

from __future__ import annotations

from typing import Any

from lineguard.stores import VerdictStore

QUANTILES = (0.5, 0.9, 0.99)

_COMPARE_SQL = """
SELECT s.model_version AS shadow_version,
       arraySort(groupUniqArray(l.model_version)) AS live_versions,
       count() AS frames,
       countIf(NOT l.is_defective AND NOT s.is_defective) AS both_pass,
       countIf(l.is_defective AND s.is_defective) AS both_defective,
       countIf(l.is_defective AND NOT s.is_defective) AS live_only,
       countIf(NOT l.is_defective AND s.is_defective) AS shadow_only,
       quantilesExactInclusive({quantiles})(l.score) AS live_score_q,
       quantilesExactInclusive({quantiles})(s.score) AS shadow_score_q,
       countIf(lb.labelled) AS labelled,
       countIf(lb.labelled AND lb.truly_defective AND l.is_defective) AS live_tp,
       countIf(lb.labelled AND NOT lb.truly_defective AND l.is_defective) AS live_fp,
       countIf(lb.labelled AND lb.truly_defective AND NOT l.is_defective) AS live_fn,
       countIf(lb.labelled AND lb.truly_defective AND s.is_defective) AS shadow_tp,
       countIf(lb.labelled AND NOT lb.truly_defective AND s.is_defective) AS shadow_fp,
       countIf(lb.labelled AND lb.truly_defective AND NOT s.is_defective) AS shadow_fn
FROM
(
    SELECT frame_id, model_version, argMax(score, scored_at_ns) AS score,
           argMax(is_defective, scored_at_ns) AS is_defective
    FROM {db}.shadow_verdicts
    WHERE line_id = {line_id:String} AND captured_at_ns >= {since_ns:Int64}
    GROUP BY frame_id, model_version
) AS s
INNER JOIN
(
    SELECT frame_id, model_version, score, is_defective
    FROM {db}.verdicts_latest
    WHERE line_id = {line_id:String} AND captured_at_ns >= {since_ns:Int64}
) AS l ON l.frame_id = s.frame_id
LEFT JOIN
(
    SELECT frame_id, 1 AS labelled, label IN ('confirmed_defect', 'missed_defect') AS truly_defective
    FROM {db}.labels_latest
    WHERE line_id = {line_id:String}
) AS lb ON lb.frame_id = s.frame_id
GROUP BY shadow_version
ORDER BY shadow_version
"""

_DISAGREEMENTS_SQL = """
SELECT toString(l.frame_id) AS frame_id, l.camera_id AS camera_id, l.captured_at_ns AS captured_at_ns,
       l.model_version AS live_version, l.score AS live_score, l.threshold AS live_threshold,
       l.is_defective AS live_defective, l.heatmap_key AS heatmap_key,
       s.model_version AS shadow_version, s.score AS shadow_score, s.threshold AS shadow_threshold,
       s.is_defective AS shadow_defective
FROM
(
    SELECT frame_id, model_version, argMax(score, scored_at_ns) AS score,
           argMax(threshold, scored_at_ns) AS threshold, argMax(is_defective, scored_at_ns) AS is_defective
    FROM {db}.shadow_verdicts
    WHERE line_id = {line_id:String} AND captured_at_ns >= {since_ns:Int64}
    GROUP BY frame_id, model_version
) AS s
INNER JOIN
(
    SELECT frame_id, camera_id, captured_at_ns, model_version, score, threshold, is_defective, heatmap_key
    FROM {db}.verdicts_latest
    WHERE line_id = {line_id:String} AND captured_at_ns >= {since_ns:Int64}
) AS l ON l.frame_id = s.frame_id
WHERE l.is_defective != s.is_defective
ORDER BY l.captured_at_ns DESC
LIMIT {limit:UInt32}
"""


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def compare(store: VerdictStore, line_id: str, since_ns: int = 0) -> list[dict[str, Any]]:
    """One dict per shadow candidate version seen on ``line_id`` since ``since_ns`` (capture time)."""
    sql = _COMPARE_SQL.replace("{db}", store.database).replace("{quantiles}", ", ".join(str(q) for q in QUANTILES))
    out = []
    for row in store.query(sql, {"line_id": line_id, "since_ns": int(since_ns)}):
        frames = int(row["frames"])
        agree = int(row["both_pass"]) + int(row["both_defective"])
        result = {k: row[k] for k in ("shadow_version", "live_versions")}
        result.update({k: int(row[k]) for k in ("frames", "both_pass", "both_defective", "live_only",
                                                 "shadow_only", "labelled")})
        result["agreement"] = _ratio(agree, frames)
        result["live_score_quantiles"] = dict(zip(QUANTILES, map(float, row["live_score_q"])))
        result["shadow_score_quantiles"] = dict(zip(QUANTILES, map(float, row["shadow_score_q"])))
        for side in ("live", "shadow"):
            tp, fp, fn = (int(row[f"{side}_{k}"]) for k in ("tp", "fp", "fn"))
            result[f"{side}_precision"] = _ratio(tp, tp + fp)
            result[f"{side}_recall"] = _ratio(tp, tp + fn)
        out.append(result)
    return out


def disagreements(store: VerdictStore, line_id: str, since_ns: int = 0, limit: int = 24) -> list[dict[str, Any]]:
    """The latest frames on which the live model and a shadow candidate disagree (for the dashboard)."""
    sql = _DISAGREEMENTS_SQL.replace("{db}", store.database)
    return store.query(sql, {"line_id": line_id, "since_ns": int(since_ns), "limit": int(limit)})


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_compare(line_id: str, results: list[dict[str, Any]]) -> str:
    """The printed report: a block per candidate, then one ``compare:`` summary line per candidate."""
    if not results:
        return f"compare: line={line_id} frames=0 (no shadow verdicts joined to live verdicts)"
    lines = []
    for r in results:
        live = ",".join(r["live_versions"])
        lines += [
            f"line {line_id}: live {live} vs shadow {r['shadow_version']} on {r['frames']} frames",
            f"  both pass {r['both_pass']}  both defective {r['both_defective']}  "
            f"live-only defective {r['live_only']}  shadow-only defective {r['shadow_only']}  "
            f"agreement {_pct(r['agreement'])}",
            "  score quantiles   " + "  ".join(f"p{round(q * 100)}" for q in QUANTILES),
            "    live   " + "  ".join(f"{v:.4f}" for v in r["live_score_quantiles"].values()),
            "    shadow " + "  ".join(f"{v:.4f}" for v in r["shadow_score_quantiles"].values()),
        ]
        if r["labelled"]:
            lines.append(f"  labelled {r['labelled']}: live precision {_pct(r['live_precision'])} recall "
                         f"{_pct(r['live_recall'])}; shadow precision {_pct(r['shadow_precision'])} recall "
                         f"{_pct(r['shadow_recall'])}")
        else:
            lines.append("  no labelled frames: precision and recall unknown")
    for r in results:
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        lines.append(f"compare: line={line_id} live={','.join(r['live_versions'])} shadow={r['shadow_version']} "
                     f"frames={r['frames']} both_pass={r['both_pass']} both_defective={r['both_defective']} "
                     f"live_only={r['live_only']} shadow_only={r['shadow_only']} "
                     f"agreement={agreement} "
                     f"labelled={r['labelled']}")
    return "\n".join(lines)
