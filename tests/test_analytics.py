"""Analytics on verdicts made by the real pipeline: every view and cookbook query, run by the real
ClickHouse engine (chdb), against figures computed here in Python from the verdict messages read
back from the verdict topics. Replays must not count twice.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.analytics import cookbook
from lineguard.analytics.schema import (PSI_FLOOR, create_analytics_schema, find_model_references,
                                        load_model_references)
from lineguard.schemas import Verdict
from lineguard.stores import ChdbStore, ServerStore

from analytics_dataset import Dataset, get_dataset
from feedback_figures import feedback, operator_labels
from pipeline_helpers import Component
from sink_fixtures import chdb_http_url  # noqa: F401 - fixture

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
UTC = dt.timezone.utc
SHIFTS = ["06-14", "14-22", "22-06"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def dataset(stack, tmp_path_factory) -> Dataset:
    return get_dataset(stack, tmp_path_factory)


@pytest.fixture(scope="module")
def store(dataset, tmp_path_factory):
    """The pipeline's ClickHouse data (a copy), analytics schema on top, and a full replay on disk."""
    path = dataset.copy_chdb(tmp_path_factory.mktemp("analytics") / "chdb")
    store = ChdbStore(path)
    try:
        create_analytics_schema(store)
        load_model_references(store, dataset.models)
        load_model_references(store, dataset.model_archive)
        # A sink re-reading the topics from the beginning: every verdict inserted once more.
        # Merges stay off, so the duplicates are certainly on disk while the figures are read.
        store.execute(f"SYSTEM STOP MERGES {store.database}.verdicts")
        store.raw_before_replay = _raw_count(store)
        store.insert_verdicts(dataset.verdicts)
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def latest(dataset) -> list[Verdict]:
    return list(dataset.latest().values())


@pytest.fixture(scope="module")
def window(dataset) -> dict[str, dt.datetime]:
    return {"since": dataset.started_at - dt.timedelta(hours=1),
            "until": dt.datetime.now(UTC) + dt.timedelta(hours=1)}


def _raw_count(store) -> int:
    return store.query(f"SELECT count() AS n FROM {store.database}.verdicts")[0]["n"]


def _at(v: Verdict) -> dt.datetime:
    return dt.datetime.fromtimestamp(v.captured_at_ns / 1e9, UTC)


def _in(v: Verdict, since: dt.datetime, until: dt.datetime) -> bool:
    return since <= _at(v) < until


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _rate_rows(groups: dict[tuple, list[Verdict]]) -> dict[tuple, tuple[int, int]]:
    return {k: (len(vs), sum(v.is_defective for v in vs)) for k, vs in groups.items()}


def _psi(observed: np.ndarray, expected: np.ndarray) -> float:
    o, e = np.maximum(observed, PSI_FLOOR), np.maximum(expected, PSI_FLOOR)
    return float(np.sum((o - e) * np.log(o / e)))


# -- replays -------------------------------------------------------------------------------


def test_replays_are_on_disk_but_every_view_counts_each_frame_once(store, dataset, latest):
    db = store.database
    replayed_in_topics = len(dataset.verdicts) - dataset.frames_sent
    assert replayed_in_topics == len(dataset.replayed_ids) > 0
    # The sink wrote the pipeline's replays as a second insert; the fixture added a full replay
    # (whose own duplicates ClickHouse may already collapse within the inserted block).
    assert store.raw_before_replay >= dataset.frames_sent
    assert _raw_count(store) >= store.raw_before_replay + dataset.frames_sent >= 2 * dataset.frames_sent
    assert store.count_frames() == len(latest) == dataset.frames_sent
    for view in ("defects_by_line_hour", "defects_by_line_day", "defects_by_camera_hour",
                 "defects_by_camera_day", "defects_by_product_hour", "defects_by_product_day"):
        rows = store.query(f"SELECT sum(frames) AS f, sum(defective) AS d FROM {db}.{view}")
        assert rows[0]["f"] == dataset.frames_sent, view
        assert rows[0]["d"] == sum(v.is_defective for v in latest), view
    # A replayed frame counts with its latest verdict: for washer frames, the v2 re-score.
    by_id = {r["frame_id"]: r for r in store.query(
        f"SELECT frame_id, model_version, score FROM {db}.verdicts_latest")}
    rescored = [v for v in latest if v.frame_id in dataset.replayed_ids and v.product == "washer"]
    assert rescored and all(v.model_version == "v2" for v in rescored)
    for v in rescored:
        assert by_id[v.frame_id]["model_version"] == "v2" and by_id[v.frame_id]["score"] == v.score
    print(f"\nreplays: {len(dataset.verdicts)} verdict messages for {dataset.frames_sent} frames; "
          f"{_raw_count(store)} rows on disk; every view sums to {dataset.frames_sent} frames")


# -- views ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dimension,keys", [("line", ("line_id",)), ("camera", ("line_id", "camera_id")),
                                            ("product", ("product",))])
@pytest.mark.parametrize("grain", ["hour", "day"])
def test_defect_views_match_python(store, latest, dimension, keys, grain):
    def bucket(v: Verdict):
        t = _at(v)
        return t.replace(minute=0, second=0, microsecond=0) if grain == "hour" else t.date()

    groups: dict[tuple, list[Verdict]] = defaultdict(list)
    for v in latest:
        groups[tuple(getattr(v, k) for k in keys) + (bucket(v),)].append(v)
    expected = _rate_rows(groups)
    rows = store.query(f"SELECT * FROM {store.database}.defects_by_{dimension}_{grain}")
    got = {tuple(r[k] for k in keys) + (r[grain],): (r["frames"], r["defective"]) for r in rows}
    assert got == expected
    assert all(_close(r["defect_rate"], r["defective"] / r["frames"]) for r in rows)


def test_score_quantile_views_match_numpy(store, latest):
    groups: dict[tuple, list[float]] = defaultdict(list)
    for v in latest:
        groups[(v.line_id, v.product, v.model_version, _at(v).date())].append(v.score)
    rows = store.query(f"SELECT * FROM {store.database}.score_quantiles_daily")
    assert len(rows) == len(groups)
    for r in rows:
        scores = np.array(groups[(r["line_id"], r["product"], r["model_version"], r["day"])])
        assert r["frames"] == len(scores)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
            assert _close(r[name], float(np.quantile(scores, q))), (name, r)
        assert _close(r["mean_score"], float(scores.mean())) and r["max_score"] == scores.max()


def _period(t: dt.datetime, grain: str) -> dt.datetime:
    """The start of ``t``'s hour or day, in UTC."""
    return t.replace(minute=0, second=0, microsecond=0) if grain == "hour" else \
        dt.datetime(t.year, t.month, t.day, tzinfo=UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _references(dataset) -> dict:  # noqa: ANN001
    return {(r.model_name, r.model_version): r
            for r in find_model_references(dataset.models) + find_model_references(dataset.model_archive)}


def _python_drift(refs: dict, latest: list[Verdict], grain: str) -> dict[tuple, dict]:
    """Per (line, period start, model, version): the normal-judged frames' histogram on the calibration
    edges and its PSI against the calibration reference, computed here from the verdicts."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for v in latest:
        if not v.is_defective:
            groups[(v.line_id, _period(_at(v), grain), v.model_name, v.model_version)].append(v.score)
    out = {}
    for key, scores in groups.items():
        ref = refs[(key[2], key[3])]
        edges = np.array(ref.edges)
        counts, _ = np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)
        smoothed = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
        out[key] = {"frames": len(scores), "counts": counts, "psi": _psi(smoothed, np.array(ref.expected))}
    return out


@pytest.mark.parametrize("grain", ["hour", "day"])
def test_drift_views_match_python_psi(store, dataset, latest, grain):
    refs = _references(dataset)
    assert {("washer", "v1"), ("washer", "v2"), ("nut", "v1")} <= set(refs)
    for ref in refs.values():  # the stored reference is the manifest's histogram, smoothed
        folder = dataset.models / ref.folder if (dataset.models / ref.folder).is_dir() else dataset.model_archive / ref.folder
        cal = json.loads((folder / "manifest.json").read_text())["calibration"]
        counts = np.array(cal["normal_histogram"], dtype=float)
        assert ref.edges == cal["normal_histogram_edges"] and ref.n_normal == counts.sum()
        assert np.allclose(ref.expected, (counts + 0.5) / (counts.sum() + 0.5 * len(counts)), rtol=0, atol=1e-15)
    expected = _python_drift(refs, latest, grain)
    view = "score_drift_hourly" if grain == "hour" else "score_drift_daily"
    rows = store.query(f"SELECT * FROM {store.database}.{view}")
    got = {(r["line_id"], _period(_utc(dt.datetime.combine(r[grain], dt.time())) if grain == "day" else _utc(r[grain]),
                                  grain), r["model_name"], r["model_version"]): r for r in rows}
    assert set(got) == set(expected)
    for key, want in expected.items():
        counts = want["counts"]
        assert got[key]["frames"] == want["frames"] and got[key]["counts"] == counts.tolist()
        assert np.allclose(got[key]["observed"], counts / counts.sum(), rtol=0, atol=1e-12)
        assert _close(got[key]["psi"], want["psi"]), key
    if grain == "day":
        print("\ndaily PSI (line, day, model and version: psi over n normal frames):")
        for key in sorted(got):
            print(f"  {key[0]} {key[1]:%Y-%m-%d} {key[2]} {key[3]}: {got[key]['psi']:.3f} over {got[key]['frames']}")


# -- cookbook ------------------------------------------------------------------------------


def _shift_of(t: dt.datetime, specs: list[str]) -> tuple[dt.date, str]:
    """(shift date, shift name) of a capture time; an overnight shift belongs to the day it began."""
    minute = t.hour * 60 + t.minute
    for shift in cookbook.parse_shifts(specs):
        if shift.contains(minute):
            day = t.date() - dt.timedelta(days=1) if shift.overnight and minute < shift.end_min else t.date()
            return day, shift.name
    raise AssertionError(f"no shift holds {t}")


@pytest.mark.parametrize("shifts", [SHIFTS, ["07:30-19:30", "19:30-07:30"]])
def test_defect_rate_per_line_per_shift(store, latest, window, shifts):
    groups: dict[tuple, list[Verdict]] = defaultdict(list)
    for v in latest:
        if _in(v, **window):
            groups[(v.line_id, *_shift_of(_at(v), shifts))].append(v)
    rows = cookbook.run(store, "defect_rate_by_shift", shifts=shifts, **window)
    got = {(r["line_id"], r["shift_date"], r["shift"]): (r["frames"], r["defective"]) for r in rows}
    assert got == _rate_rows(groups)
    assert {r["shift"] for r in rows} == set(shifts)  # nine days: every shift has frames
    assert all(_close(r["defect_rate"], r["defective"] / r["frames"]) for r in rows)


def _python_worst(latest, since, until, limit=10):
    groups: dict[tuple, list[Verdict]] = defaultdict(list)
    for v in latest:
        if since <= _at(v) < until:
            groups[(v.line_id, v.camera_id)].append(v)
    rows = [(k, len(vs), sum(v.is_defective for v in vs)) for k, vs in groups.items()]
    rows.sort(key=lambda r: (-r[2] / r[1], -r[2], r[0]))
    return [(k, n, d) for k, n, d in rows[:limit]]


def test_worst_cameras_this_week(store, latest, window):
    last_week = {"since": window["until"] - dt.timedelta(days=7), "until": window["until"]}
    rows = cookbook.run(store, "worst_cameras", limit=3, **last_week)
    assert [((r["line_id"], r["camera_id"]), r["frames"], r["defective"]) for r in rows] == \
        _python_worst(latest, **last_week, limit=3)
    # The default window is this ISO week (since Monday 00:00 UTC).
    rows = cookbook.run(store, "worst_cameras")
    monday = cookbook.start_of_week()
    assert [((r["line_id"], r["camera_id"]), r["frames"], r["defective"]) for r in rows] == \
        _python_worst(latest, monday, window["until"])
    print("\nworst cameras (last 7 days): " + "; ".join(
        f"{r['camera_id']} {r['defective']}/{r['frames']}" for r in cookbook.run(store, "worst_cameras", **last_week)))


def test_pareto_of_defects_by_product(store, latest, window):
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for v in latest:
        if _in(v, **window):
            counts[v.product][0] += 1
            counts[v.product][1] += v.is_defective
    order = sorted(counts, key=lambda p: (-counts[p][1], p))
    total = sum(d for _, d in counts.values())
    rows = cookbook.run(store, "defect_pareto_by_product", **window)
    assert [r["product"] for r in rows] == order
    cumulative = 0
    for r in rows:
        frames, defective = counts[r["product"]]
        cumulative += defective
        assert (r["frames"], r["defective"]) == (frames, defective)
        assert _close(r["share"], defective / total) and _close(r["cumulative_share"], cumulative / total)
    assert _close(rows[-1]["cumulative_share"], 1.0)


def _python_shift(scores_before: list[float], scores_after: list[float]) -> dict[str, dict[str, float]]:
    before, after = np.array(scores_before), np.array(scores_after)
    cuts = np.quantile(before, np.arange(1, 10) / 10)
    out = {}
    for side, scores in (("before", before), ("after", after)):
        bins = np.searchsorted(cuts, scores, side="right")  # = number of cuts <= score
        out[side] = {"frames": len(scores), "mean_score": scores.mean(),
                     "p50": np.quantile(scores, 0.5), "p90": np.quantile(scores, 0.9),
                     "p99": np.quantile(scores, 0.99),
                     "observed": np.bincount(bins, minlength=10) / len(scores)}
    out["after"]["psi_vs_before"] = _psi(out["after"]["observed"], out["before"]["observed"])
    return out


def _check_shift(rows, expected, defects):
    assert [r["side"] for r in rows] == ["before", "after"]
    for r in rows:
        exp = expected[r["side"]]
        assert r["frames"] == exp["frames"] and r["defective"] == defects[r["side"]]
        for name in ("mean_score", "p50", "p90", "p99"):
            assert _close(r[name], float(exp[name])), (r["side"], name)
        assert np.allclose(r["observed"], exp["observed"], rtol=0, atol=1e-12)
    assert rows[0]["psi_vs_before"] == 0 and _close(rows[1]["psi_vs_before"], expected["after"]["psi_vs_before"])


def test_score_shift_after_a_process_change(store, dataset, latest, window):
    line = dataset.lines[1]
    since = dataset.model_change_at  # washer v2 on both sides: only the process changed
    sides: dict[str, list[Verdict]] = {"before": [], "after": []}
    for v in latest:
        if v.line_id == line and v.product == "washer" and _in(v, since, window["until"]):
            sides["before" if _at(v) < dataset.process_change_at else "after"].append(v)
    expected = _python_shift([v.score for v in sides["before"]], [v.score for v in sides["after"]])
    rows = cookbook.run(store, "score_shift_at", line_id=line, product="washer", at=dataset.process_change_at,
                        since=since, until=window["until"])
    _check_shift(rows, expected, {k: sum(v.is_defective for v in vs) for k, vs in sides.items()})
    print(f"\nprocess change on {line}: mean score {rows[0]['mean_score']:.3f} -> {rows[1]['mean_score']:.3f}, "
          f"defect rate {rows[0]['defect_rate']:.3f} -> {rows[1]['defect_rate']:.3f}, "
          f"PSI after vs before {rows[1]['psi_vs_before']:.3f}")


def test_score_shift_after_a_model_change(store, dataset, latest, window):
    line = dataset.lines[0]
    sides: dict[str, list[Verdict]] = {"before": [], "after": []}
    for v in latest:
        if v.line_id == line and v.product == "washer" and _in(v, **window):
            sides["before" if v.model_version == "v1" else "after"].append(v)
    expected = _python_shift([v.score for v in sides["before"]], [v.score for v in sides["after"]])
    rows = cookbook.run(store, "score_shift_by_version", line_id=line, product="washer",
                        before_version="v1", after_version="v2", **window)
    _check_shift(rows, expected, {k: sum(v.is_defective for v in vs) for k, vs in sides.items()})
    print(f"\nmodel change v1 -> v2 on {line}: frames {rows[0]['frames']} / {rows[1]['frames']}, "
          f"p50 {rows[0]['p50']:.3f} -> {rows[1]['p50']:.3f}, PSI {rows[1]['psi_vs_before']:.3f}")


@pytest.mark.parametrize("grain", ["hour", "day"])
def test_defect_rate_per_line_over_time(store, latest, window, grain):
    groups: dict[tuple, list[Verdict]] = defaultdict(list)
    for v in latest:
        if _in(v, **window):
            groups[(v.line_id, _period(_at(v), grain))].append(v)
    rows = cookbook.run(store, "defect_rate_by_line", grain=grain, **window)
    got = {(r["line_id"], _utc(r["period"])): (r["frames"], r["defective"]) for r in rows}
    assert got == _rate_rows(groups)
    assert all(_close(r["defect_rate"], r["defective"] / r["frames"]) for r in rows)


@pytest.mark.parametrize("grain", ["hour", "day"])
def test_drift_psi_per_line_over_time(store, dataset, latest, grain):
    # A window that cuts through the data: periods from the start of since's hour or day, until excluded.
    since = dataset.started_at + dt.timedelta(days=3, hours=5, minutes=17)
    until = dataset.started_at + dt.timedelta(days=7, hours=2)
    expected = {k: w for k, w in _python_drift(_references(dataset), latest, grain).items()
                if _period(since, grain) <= k[1] < until}
    rows = cookbook.run(store, "drift_psi", grain=grain, since=since, until=until)
    got = {(r["line_id"], _utc(r["period"]), r["model_name"], r["model_version"]): r for r in rows}
    assert set(got) == set(expected) and len(got) > 5
    for key, want in expected.items():
        assert got[key]["frames"] == want["frames"] and _close(got[key]["psi"], want["psi"]), key
    line = dataset.lines[0]
    rows = cookbook.run(store, "drift_psi", grain=grain, since=since, until=until, line_id=line)
    assert {r["line_id"] for r in rows} == {line} and len(rows) == sum(1 for k in expected if k[0] == line)


def test_line_models_and_latest_defects(store, dataset, latest, window):
    rows = cookbook.run(store, "line_models", **window)
    for r in rows:
        mine = [v for v in latest if v.line_id == r["line_id"] and _in(v, **window)]
        newest = max(mine, key=lambda v: v.captured_at_ns)
        assert (r["model_version"], r["frames"]) == (newest.model_version, len(mine))
    assert [r["line_id"] for r in rows] == sorted(dataset.lines)
    rows = cookbook.run(store, "latest_defects", limit=5, **window)
    defects = sorted((v for v in latest if v.is_defective), key=lambda v: (-v.captured_at_ns, v.frame_id))
    assert [r["frame_id"] for r in rows] == [v.frame_id for v in defects[:5]]
    assert all(r["heatmap_key"] for r in rows)


def test_cookbook_rejects_unknown_queries_and_parameters(store):
    with pytest.raises(ValueError, match="no cookbook query"):
        cookbook.run(store, "no_such_query")
    with pytest.raises(ValueError, match="unknown parameter"):
        cookbook.run(store, "worst_cameras", camera="x")
    with pytest.raises(ValueError, match="cover every minute"):
        cookbook.run(store, "defect_rate_by_shift", shifts=["06-14", "14-22"])


def _all_queries(dataset, window) -> dict[str, dict]:
    return {
        "defect_rate_by_shift": {"shifts": SHIFTS, **window},
        "worst_cameras": window,
        "defect_pareto_by_product": window,
        "score_shift_at": {"line_id": dataset.lines[1], "product": "washer", "at": dataset.process_change_at, **window},
        "score_shift_by_version": {"line_id": dataset.lines[0], "product": "washer", "before_version": "v1",
                                   "after_version": "v2", **window},
        "drift_psi": {"grain": "day", **window},
        "defect_rate_by_line": {"grain": "hour", **window},
        "line_models": window,
        "latest_defects": window,
        "feedback_by_line": window,
        "feedback_by_camera": window,
        "feedback_by_model_version": window,
        "passed_sample": window,
    }


@pytest.fixture(scope="module")
def labels(dataset, store):
    """Operators' labels on the pipeline's verdicts (some relabelled), in the store."""
    labels = operator_labels(dataset.verdicts, int(dataset.started_at.timestamp()) * 10**9)
    store.insert_labels(labels)
    return labels


def test_precision_and_recall_from_labels_on_the_pipeline_verdicts(store, dataset, labels, window):
    since, until = window["since"], window["until"]
    rows = cookbook.run(store, "feedback_by_model_version", **window)
    expected = feedback(dataset.verdicts, labels, lambda v: (v.line_id, v.model_name, v.model_version),
                        lambda v: _in(v, since, until))
    got = {(r["line_id"], r["model_name"], r["model_version"]): r for r in rows}
    assert got.keys() == expected.keys() and len(got) >= 3  # both lines, washer v1 and v2
    for key, row in expected.items():
        for name, value in row.items():
            assert (got[key][name] is None) if value is None else got[key][name] == pytest.approx(value), (key, name)


def test_the_same_figures_through_a_clickhouse_server_connection(store, dataset, labels, window, tmp_path, request):
    """The cookbook through clickhouse-connect (the server backend) gives what chdb gives in-process."""
    url = request.getfixturevalue("chdb_http_url")
    server = ServerStore(url, database=f"lineguard_{re.sub(r'[^a-z0-9]', '', dataset.lines[0])}")
    try:
        create_analytics_schema(server)
        load_model_references(server, dataset.models)
        load_model_references(server, dataset.model_archive)
        server.insert_verdicts(dataset.verdicts)
        server.insert_labels(labels)
        queries = _all_queries(dataset, window)
        assert set(queries) == set(cookbook.QUERIES)
        for name, params in queries.items():
            ours, theirs = cookbook.run(store, name, **params), cookbook.run(server, name, **params)
            assert len(ours) == len(theirs) > 0, name
            for a, b in zip(ours, theirs):
                assert a.keys() == b.keys(), name
                for key in a:
                    if isinstance(a[key], float):
                        assert _close(a[key], b[key]), (name, key)
                    elif isinstance(a[key], list):
                        assert np.allclose(a[key], b[key], rtol=1e-12), (name, key)
                    else:
                        assert a[key] == b[key], (name, key)
    finally:
        server.close()


def test_report_prints_tables_and_writes_charts(dataset, latest, window, tmp_path):
    chdb = dataset.copy_chdb(tmp_path / "chdb")
    png_dir = tmp_path / "charts"
    env = {**dataset.env, "LINEGUARD_SINKS__CLICKHOUSE__CHDB_PATH": str(chdb)}
    since = window["since"].strftime("%Y-%m-%dT%H:%M:%S")
    report = Component(["report", "--since", since, "--png-dir", str(png_dir), "--model-dir", str(dataset.models),
                        "--model-dir", str(dataset.model_archive), "--line", dataset.lines[0],
                        "--versions", "v1,v2"], env, tmp_path / "report.log")
    assert report.wait(120) == 0, report.output()[-3000:]
    out = report.output()
    print("\n" + out)
    for title in ("Defect rate per line per shift", "Worst cameras", "Pareto of defects by product",
                  "Score drift per line", "Model version per line", "Score distribution of two model versions"):
        assert title in out, title
    worst = _python_worst(latest, window["since"], window["until"], limit=1)[0]
    assert re.search(rf"{re.escape(worst[0][1])}\s+{worst[1]}\s+{worst[2]}\s", out), out
    total_defects = sum(v.is_defective for v in latest)
    assert re.search(rf"total\s+{dataset.frames_sent}\s+{total_defects}\s", out), out
    charts = sorted(p.name for p in png_dir.glob("*.png"))
    assert charts == ["defect_rate_by_line.png", "defect_rate_by_shift.png", "drift_psi.png",
                      "pareto_products.png", "score_shift.png", "worst_cameras.png"]
    for name in charts:
        with Image.open(png_dir / name) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 300
            # A chart, not an empty canvas: many distinct colours.
            assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50, name
    # Kept for people to look at (artifacts/ is git-ignored).
    shutil.copytree(png_dir, ARTIFACTS / "report", dirs_exist_ok=True)


def test_analytics_page_cookbook_is_the_code():
    page = (Path(__file__).resolve().parents[1] / "docs" / "analytics.md").read_text()
    section = page.split("## SQL cookbook", 1)[1].split("\n## ", 1)[0]
    for name in cookbook.QUERIES:
        assert f"`{name}`" in section, name
    for name in ("defect_rate_by_shift", "worst_cameras", "defect_pareto_by_product"):
        assert cookbook.QUERIES[name].render("lineguard").strip() in section, name
