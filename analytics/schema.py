"""Analytics objects on top of the sinks' ``verdicts`` table: views that stay right under replays,
the ``model_references`` table, and loading a model folder's calibration reference into it.

Why plain views and no materialised views: verdict delivery is at-least-once, so
a frame can be inserted twice (a crashed processor, a re-read topic), and a replay may be
scored by another model version. A materialised view would aggregate every inserted copy
(a per-hour ``uniqExact`` state counts frames once, but cannot tell which of two verdicts
is the latest). Every view here reads ``verdicts_latest`` (:mod:`lineguard.stores.verdict_schema`):
one row per frame, its latest verdict, grouped on the table's sort key with the filters
pushed below the grouping -- no ``FINAL``.

Drift: the manifest of every model carries a histogram of the scores of normal
calibration images (``calibration.normal_histogram`` and ``normal_histogram_edges``).
``score_drift_hourly`` / ``score_drift_daily`` compare, per line and hour (day),
the distribution of the scores of frames judged normal against that reference
with the population stability index

    PSI = sum over bins of (observed - expected) * ln(observed / expected)

(scores outside the reference range count in the first or last bin). Both
histograms are smoothed with half a count per bin -- ``(count + 0.5) / (n + 0.5 *
bins)``, Jeffreys' prior: calibration sets are small (tens of images) and so are
the normal frames of a quiet hour, and without it a bin that happened to stay
empty would count as an impossible event and swamp the index. With thousands of
frames an hour the smoothing vanishes (``observed`` is the unsmoothed share).

Rules of thumb: < 0.1 stable, 0.1-0.25 worth a look, > 0.25 the line no longer
looks like the images the model was calibrated on (lighting, fixture, supplier or
model changed). Few frames (or a reference from few images) make PSI noisy: read
it with the ``frames`` column beside it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineguard.engines.manifest import MANIFEST_FILE, Manifest
from lineguard.stores import VerdictStore

PSI_FLOOR = 1e-4  # smallest bin fraction in a PSI sum of unsmoothed fractions (before/after queries)
PSEUDOCOUNT = 0.5  # per bin, added to both histograms of the drift views (Jeffreys)

# Dimensions of the defect-count views: view name part -> grouping columns.
_DIMENSIONS = {
    "line": ("line_id",),
    "camera": ("line_id", "camera_id"),
    "product": ("product",),
}
# Time grains: view name part -> (bucket expression, column name).
_GRAINS = {
    "hour": ("toStartOfHour(captured_at)", "hour"),
    "day": ("toDate(captured_at)", "day"),
}


def defect_view(dimension: str, grain: str) -> str:
    """Name of the defect-count view for a dimension (line/camera/product) and grain (hour/day)."""
    if dimension not in _DIMENSIONS or grain not in _GRAINS:
        raise ValueError(f"no defect view for {dimension!r} by {grain!r}")
    return f"defects_by_{dimension}_{grain}"


def _psi_sql(observed: str, expected: str) -> str:
    o = f"greatest(o, {PSI_FLOOR})"
    e = f"greatest(e, {PSI_FLOOR})"
    return f"arraySum(arrayMap((o, e) -> ({o} - {e}) * log({o} / {e}), {observed}, {expected}))"


def analytics_statements(database: str) -> list[str]:
    """The idempotent DDL of the analytics objects (after the sinks' own schema)."""
    db = database  # already checked by VerdictStore
    out = [
        f"""
        CREATE TABLE IF NOT EXISTS {db}.model_references
        (
            model_name    LowCardinality(String),
            model_version LowCardinality(String),
            folder        String,
            kind          LowCardinality(String),
            threshold     Float64,
            edges         Array(Float64),
            expected      Array(Float64),
            n_normal      UInt32,
            loaded_at     DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree(loaded_at)
        ORDER BY (model_name, model_version)
        """,
    ]
    for dimension, columns in _DIMENSIONS.items():
        keys = ", ".join(columns)
        for grain, (bucket, column) in _GRAINS.items():
            out.append(
                f"""
                CREATE OR REPLACE VIEW {db}.{defect_view(dimension, grain)} AS
                SELECT {keys}, {bucket} AS {column}, count() AS frames,
                       countIf(is_defective) AS defective, defective / frames AS defect_rate
                FROM {db}.verdicts_latest
                GROUP BY {keys}, {column}
                """
            )
    for grain, (bucket, column) in _GRAINS.items():
        suffix = "hourly" if grain == "hour" else "daily"
        # quantileExactInclusive: linear interpolation (numpy's default), exact.
        out.append(
            f"""
            CREATE OR REPLACE VIEW {db}.score_quantiles_{suffix} AS
            SELECT line_id, product, model_version, {bucket} AS {column}, count() AS frames,
                   avg(score) AS mean_score,
                   quantilesExactInclusive(0.5, 0.9, 0.95, 0.99)(score) AS q,
                   q[1] AS p50, q[2] AS p90, q[3] AS p95, q[4] AS p99, max(score) AS max_score
            FROM {db}.verdicts_latest
            GROUP BY line_id, product, model_version, {column}
            """
        )
        out.append(
            f"""
            CREATE OR REPLACE VIEW {db}.score_drift_{suffix} AS
            SELECT line_id, {column}, model_name, model_version, frames, counts, observed, expected,
                   arrayMap(c -> (c + {PSEUDOCOUNT}) / (frames + {PSEUDOCOUNT} * length(counts)), counts) AS smoothed,
                   {_psi_sql('smoothed', 'expected')} AS psi
            FROM
            (
                SELECT line_id, {column}, model_name, model_version, count() AS frames,
                       any(ref_expected) AS expected, groupArray(bin) AS bins,
                       arrayMap(k -> countEqual(bins, k), arrayEnumerate(expected)) AS counts,
                       arrayMap(c -> c / frames, counts) AS observed
                FROM
                (
                    SELECT v.line_id AS line_id, {bucket.replace('captured_at', 'v.captured_at')} AS {column},
                           v.model_name AS model_name, v.model_version AS model_version,
                           r.expected AS ref_expected,
                           -- bin k holds edges[k] <= score < edges[k+1]; outliers go to the end bins
                           greatest(1, least(length(r.edges) - 1, arrayCount(e -> e <= v.score, r.edges))) AS bin
                    FROM {db}.verdicts_latest AS v
                    INNER JOIN (SELECT model_name, model_version, edges, expected
                                FROM {db}.model_references FINAL) AS r
                        ON v.model_name = r.model_name AND v.model_version = r.model_version
                    WHERE NOT v.is_defective
                )
                GROUP BY line_id, {column}, model_name, model_version
            )
            """
        )
    return out


def create_analytics_schema(store: VerdictStore) -> None:
    """Create the sinks' schema (table, latest and hourly views), then the analytics objects. Idempotent."""
    store.create_schema()
    for statement in analytics_statements(store.database):
        store.execute(statement)


@dataclass(frozen=True)
class ModelReference:
    """A model's calibration reference: the normal-score histogram its manifest carries."""

    model_name: str
    model_version: str
    folder: str
    kind: str
    threshold: float
    edges: list[float]
    expected: list[float]  # smoothed fractions, summing to 1
    n_normal: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, folder: str) -> "ModelReference | None":
        cal = manifest.calibration or {}
        counts = cal.get("normal_histogram")
        edges = cal.get("normal_histogram_edges")
        if not counts or not edges or len(edges) != len(counts) + 1 or sum(counts) <= 0:
            return None  # an old or hand-made manifest without a reference: no drift for it
        total = float(sum(counts))
        smoothed = total + PSEUDOCOUNT * len(counts)
        return cls(manifest.name, manifest.version, folder, manifest.kind,
                   float(manifest.thresholds.value), [float(e) for e in edges],
                   [(c + PSEUDOCOUNT) / smoothed for c in counts], int(total))


def find_model_references(model_dir: str | Path) -> list[ModelReference]:
    """The references of every model folder (``<product>`` and ``<product>@<line>``) under ``model_dir``."""
    root = Path(model_dir)
    refs: list[ModelReference] = []
    if not root.is_dir():
        return refs
    for folder in sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()):
        try:
            manifest = Manifest.load(folder)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            continue  # not ours to judge here; the processors report broken manifests
        ref = ModelReference.from_manifest(manifest, folder.name)
        if ref is not None:
            refs.append(ref)
    return refs


def store_model_references(store: VerdictStore, refs: list[ModelReference]) -> int:
    """Upsert references (a re-load of the same model version replaces its row)."""
    if not refs:
        return 0
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    rows = "\n".join(
        json.dumps({"model_name": r.model_name, "model_version": r.model_version, "folder": r.folder,
                    "kind": r.kind, "threshold": r.threshold, "edges": r.edges,
                    "expected": r.expected, "n_normal": r.n_normal, "loaded_at": now})
        for r in refs
    )
    store.execute(f"INSERT INTO {store.database}.model_references FORMAT JSONEachRow\n{rows}")
    return len(refs)


def load_model_references(store: VerdictStore, model_dir: str | Path) -> list[ModelReference]:
    """Fill ``model_references`` from a model folder; returns what was stored."""
    refs = find_model_references(model_dir)
    store_model_references(store, refs)
    return refs


def query_rows(store: VerdictStore, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``store.query`` with the database name filled in for ``{db}``."""
    return store.query(sql.replace("{db}", store.database), parameters)
