"""The provisioned Grafana dashboard: its JSON and provisioning files are what Grafana and the
grafana-clickhouse-datasource plugin expect, and every panel's SQL -- with the plugin's macros
expanded as the plugin expands them -- runs on the real ClickHouse engine (chdb) over the
pipeline's demo dataset and gives the figures the cookbook gives.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from lineguard.analytics import cookbook
from lineguard.analytics.schema import create_analytics_schema, load_model_references
from lineguard.stores import ChdbStore

from analytics_dataset import get_dataset

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
PLUGIN = "grafana-clickhouse-datasource"


def expand(sql: str, start: dt.datetime, end: dt.datetime, interval_s: int, variables: dict[str, list[str]]) -> str:
    """Grafana's template variables, then the plugin's macros (as pkg/macros/macros.go writes them)."""
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        sql = sql.replace(f"${{{name}:singlequote}}", quoted).replace(f"${{{name}}}", quoted).replace(f"${name}", quoted)
    f, t = int(start.timestamp()), int(end.timestamp())
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m[1]} >= toDateTime({f}) AND {m[1]} <= toDateTime({t})", sql)
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {max(interval_s, 1)} second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({f})").replace("$__toTime", f"toDateTime({t})")
    sql = sql.replace("$__interval_s", str(max(interval_s, 1)))
    assert "$" not in sql, f"unexpanded macro or variable in {sql}"
    return sql


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((GRAFANA / "lineguard-dashboard.json").read_text())


@pytest.fixture(scope="module")
def store(stack, tmp_path_factory):
    dataset = get_dataset(stack, tmp_path_factory)
    store = ChdbStore(dataset.copy_chdb(tmp_path_factory.mktemp("grafana") / "chdb"))
    try:
        create_analytics_schema(store)
        load_model_references(store, dataset.models)
        load_model_references(store, dataset.model_archive)
        yield store, dataset
    finally:
        store.close()


def test_dashboard_and_provisioning_are_well_formed(dashboard):
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yml").read_text())
    # The dashboard's ClickHouse source; the other one is Prometheus, for the alert rules (tests/test_alerts.py).
    (source,) = [s for s in sources["datasources"] if s["type"] == PLUGIN]
    assert {s["type"] for s in sources["datasources"]} == {PLUGIN, "prometheus"}
    assert sources["apiVersion"] == 1 and source["type"] == PLUGIN
    assert source["jsonData"]["defaultDatabase"] == "lineguard" and source["jsonData"]["protocol"] in ("http", "native")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"]

    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    (line_var,) = dashboard["templating"]["list"]
    assert line_var["name"] == "line" and line_var["datasource"]["uid"] == source["uid"]
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        assert panel["type"] in ("stat", "table", "timeseries", "barchart")
        for target in panel["targets"]:
            assert target["datasource"] == {"type": PLUGIN, "uid": source["uid"]}
            assert target["editorType"] == "sql" and target["rawSql"].strip()
            assert target["format"] == (0 if panel["type"] == "timeseries" else 1)
            assert "FINAL" in target["rawSql"] or "score_drift_" in target["rawSql"], panel["title"]  # replay-safe


def _rows(store, sql: str) -> list[dict]:
    return store.query(sql)


def test_every_panel_query_runs_on_clickhouse(store, dashboard):
    store, dataset = store
    start, end = dataset.started_at - dt.timedelta(hours=1), dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    variables = {"line": sorted(dataset.lines)}
    results: dict[str, list[dict]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            rows = _rows(store, expand(target["rawSql"], start, end, 3600, variables))
            assert rows, f"panel {panel['title']!r} returned no rows"
            if panel["type"] == "timeseries":
                assert all(isinstance(r["time"], dt.datetime) for r in rows), panel["title"]
                assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
            results[panel["title"]] = rows
    print("\nGrafana panels: " + "; ".join(f"{title}: {len(rows)} rows" for title, rows in results.items()))

    latest = dataset.latest()
    window = {"since": start, "until": end}
    assert results["Frames inspected"][0]["frames"] == dataset.frames_sent
    rate = sum(v.is_defective for v in latest.values()) / len(latest)
    assert math.isclose(results["Defect rate"][0]["defect_rate"], rate, rel_tol=1e-12)
    worst = cookbook.run(store, "worst_cameras", **window)
    assert [(r["camera_id"], r["frames"], r["defective"]) for r in results["Worst cameras"]] == \
        [(r["camera_id"], r["frames"], r["defective"]) for r in worst]
    assert [r["model_version"] for r in results["Model version per line"]] == \
        [r["model_version"] for r in cookbook.run(store, "line_models", **window)]
    # The shift panel (default shifts) agrees with the cookbook's per-shift figures, summed over dates.
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in cookbook.run(store, "defect_rate_by_shift", shifts=["06-14", "14-22", "22-06"], **window):
        totals[(r["line_id"], r["shift"])][0] += r["frames"]
        totals[(r["line_id"], r["shift"])][1] += r["defective"]
    panel = {(r["line_id"], r["shift"]): r["defect_rate"] for r in results["Defect rate per line and shift (UTC)"]}
    assert panel.keys() == totals.keys()
    assert all(math.isclose(panel[k], d / n, rel_tol=1e-12) for k, (n, d) in totals.items())
    drift = cookbook.run(store, "drift_psi", grain="hour", **window)
    assert len(results["Score drift per line (PSI vs calibration)"]) == len(drift)
    # One line selected: only its rows.
    one = _rows(store, expand(dashboard["panels"][0]["targets"][0]["rawSql"], start, end, 3600,
                              {"line": [dataset.lines[0]]}))
    assert one[0]["frames"] == sum(1 for v in latest.values() if v.line_id == dataset.lines[0])
