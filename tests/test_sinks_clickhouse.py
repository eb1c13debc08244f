"""VerdictStore tests, run against both backends: embedded chdb, and clickhouse-connect
talking HTTP to the chdb-backed fixture (see tests/sink_fixtures.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import textwrap
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from lineguard.schemas import Verdict
from lineguard.stores import VERDICT_COLUMNS, ChdbPathInUseError, ChdbStore, VerdictStore, verdict_row

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file
from sink_fixtures import HOUR_NS, chdb_http_url, make_verdicts, verdict_store  # noqa: E402,F401


def _utc_from_ns(ns: int) -> dt.datetime:
    micros = ns // 1000  # DateTime64(6): truncated to the microsecond
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)


def test_create_schema_is_idempotent_and_has_the_replacing_layout(verdict_store: VerdictStore) -> None:
    verdict_store.create_schema()  # the fixture ran it once already
    db = verdict_store.database
    tables = {
        row["name"]: row
        for row in verdict_store.query(
            "SELECT name, engine, sorting_key, partition_key, engine_full FROM system.tables "
            "WHERE database = {db:String}",
            {"db": db},
        )
    }
    assert set(tables) == {"verdicts", "verdicts_latest", "verdicts_hourly", "parts", "labels", "labels_latest",
                           "shadow_verdicts", "model_events"}
    verdicts = tables["verdicts"]
    assert verdicts["engine"] == "ReplacingMergeTree"
    assert "ReplacingMergeTree(scored_at_ns)" in verdicts["engine_full"]
    captured = "fromUnixTimestamp64Micro(intDiv(captured_at_ns, 1000), 'UTC')"
    # line, product and camera filters use the index; every key part is fixed by the frame
    assert verdicts["sorting_key"] == "line_id, product, camera_id, captured_at_ns, frame_id"
    assert verdicts["partition_key"] == f"toYYYYMMDD({captured})"
    assert "ttl_only_drop_parts = 1" in verdicts["engine_full"]
    assert "TTL" not in verdicts["engine_full"]  # a store opened without ttl_days keeps everything
    assert tables["verdicts_latest"]["engine"] == tables["verdicts_hourly"]["engine"] == "View"
    columns = {
        row["name"]: row["type"]
        for row in verdict_store.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'verdicts'",
            {"db": db},
        )
    }
    for field in dataclasses.fields(make_verdicts(1)[0]):
        assert field.name in columns, f"Verdict field {field.name} has no column"
    assert columns["captured_at"] == columns["scored_at"] == "DateTime64(6, 'UTC')"
    assert columns["frame_id"] == "UUID"


def test_insert_columns_are_verdicts_fields_and_the_tables_plain_columns(verdict_store: VerdictStore) -> None:
    """Adding a Verdict field without its column (or a column without its field) fails here."""
    assert VERDICT_COLUMNS == tuple(field.name for field in dataclasses.fields(Verdict))
    plain_columns = [
        row["name"]
        for row in verdict_store.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'verdicts' "
            "AND default_kind = '' ORDER BY position",
            {"db": verdict_store.database},
        )
    ]
    assert tuple(plain_columns) == VERDICT_COLUMNS


def test_verdict_row_hands_the_clients_plain_python_values() -> None:
    verdict = dataclasses.replace(
        make_verdicts(1)[0], seq=np.int64(7), score=np.float32(0.5), is_defective=np.bool_(True), heatmap_key=None
    )
    row = dict(zip(VERDICT_COLUMNS, verdict_row(verdict)))
    # frame ids are hex UUID4s: the UUID column takes their canonical form
    # no meta is an empty map (a Map column is not Nullable)
    assert row == {**dataclasses.asdict(verdict), "frame_id": str(uuid.UUID(verdict.frame_id)),
                   "meta": verdict.meta or {}}
    # anything else goes through unchanged, for ClickHouse to refuse (a permanent, dead-lettered error)
    assert verdict_row(dataclasses.replace(verdict, frame_id="f1"))[0] == "f1"
    assert type(row["seq"]) is int and type(row["score"]) is float and type(row["is_defective"]) is bool
    assert row["heatmap_key"] is None


def test_inserted_verdicts_read_back_field_for_field(verdict_store: VerdictStore) -> None:
    verdicts = make_verdicts(100)
    assert verdict_store.insert_verdicts(verdicts) == 100
    rows = verdict_store.query(
        f"SELECT *, captured_at, scored_at FROM {verdict_store.database}.verdicts FINAL ORDER BY seq"
    )
    assert len(rows) == 100
    for verdict, row in zip(verdicts, rows):
        for name, value in dataclasses.asdict(verdict).items():
            assert row[name] == (value or {} if name == "meta" else value), name
        assert row["captured_at"] == _utc_from_ns(verdict.captured_at_ns)
        assert row["scored_at"] == _utc_from_ns(verdict.scored_at_ns)


def test_replayed_batch_collapses_to_one_row_per_frame(verdict_store: VerdictStore) -> None:
    verdicts = make_verdicts(100)
    verdict_store.insert_verdicts(verdicts)
    verdict_store.insert_verdicts(verdicts)  # the sink replays after a crash before commit
    assert verdict_store.count_frames() == 100
    raw = verdict_store.query(f"SELECT count() AS n FROM {verdict_store.database}.verdicts")[0]["n"]
    assert raw in (100, 200)  # 100 only if a background merge already ran


def test_rescored_frame_keeps_the_latest_verdict(verdict_store: VerdictStore) -> None:
    original = make_verdicts(10)
    verdict_store.insert_verdicts(original)
    rescored = dataclasses.replace(
        original[3], score=0.99, is_defective=True, scored_at_ns=original[3].scored_at_ns + 10_000_000
    )
    verdict_store.insert_verdicts([rescored])
    rows = verdict_store.query(
        f"SELECT score, is_defective FROM {verdict_store.database}.verdicts FINAL "
        "WHERE frame_id = {frame:String}",
        {"frame": rescored.frame_id},
    )
    assert rows == [{"score": 0.99, "is_defective": True}]
    assert verdict_store.count_frames() == 10


def test_hourly_view_matches_figures_computed_in_python(verdict_store: VerdictStore) -> None:
    verdicts = make_verdicts(300, hours=3)
    verdict_store.insert_verdicts(verdicts)
    verdict_store.insert_verdicts(verdicts[:120])  # partial replay must not skew anything
    # Python's side of the truth, one entry per frame.
    groups: dict[tuple[str, str, dt.datetime], list] = defaultdict(list)
    for v in verdicts:
        hour = _utc_from_ns(v.captured_at_ns // HOUR_NS * HOUR_NS)
        groups[(v.line_id, v.product, hour)].append(v)

    rows = verdict_store.query(
        f"SELECT * FROM {verdict_store.database}.verdicts_hourly ORDER BY line_id, product, hour"
    )
    assert len(rows) == len(groups) == 2 * 2 * 3
    for row in rows:
        members = groups[(row["line_id"], row["product"], row["hour"])]
        scores = np.array([v.score for v in members])
        defective = sum(v.is_defective for v in members)
        assert row["frames"] == len(members)
        assert row["defective"] == defective
        assert row["defect_rate"] == pytest.approx(defective / len(members), rel=1e-12)
        assert row["avg_score"] == pytest.approx(scores.mean(), rel=1e-12)
        assert row["p50_score"] == pytest.approx(np.percentile(scores, 50), rel=1e-12)
        assert row["p95_score"] == pytest.approx(np.percentile(scores, 95), rel=1e-12)


def test_empty_insert_is_a_no_op(verdict_store: VerdictStore) -> None:
    assert verdict_store.insert_verdicts([]) == 0
    assert verdict_store.count_frames() == 0


def test_chdb_path_held_by_another_process_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from chdb import session
            s = session.Session({str(path)!r})
            print("open", flush=True)
            sys.stdin.readline()   # hold the path until the test is done
            s.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(ChdbPathInUseError, match="only one process may open a chdb path") as info:
            ChdbStore(path)
        assert f"process {holder.pid}" in str(info.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    # Once the other process is gone the path opens normally.
    store = ChdbStore(path)
    try:
        store.create_schema()
        assert store.count_frames() == 0
    finally:
        store.close()


def test_non_finite_floats_survive_the_round_trip(verdict_store: VerdictStore) -> None:
    verdict = dataclasses.replace(make_verdicts(1)[0], score=float("nan"), inference_ms=float("inf"))
    verdict_store.insert_verdicts([verdict])
    row = verdict_store.query(f"SELECT score, inference_ms FROM {verdict_store.database}.verdicts")[0]
    assert np.isnan(row["score"]) and row["inference_ms"] == float("inf")


def test_open_store_follows_the_settings(tmp_path: Path, chdb_http_url: str) -> None:  # noqa: F811
    from lineguard.config import Settings
    from lineguard.stores import ServerStore, open_store

    settings = Settings(state_dir=tmp_path / "state")
    store = open_store(settings)
    try:
        assert isinstance(store, ChdbStore) and store.path == tmp_path / "state" / "chdb"
    finally:
        store.close()
    settings.sinks.clickhouse.backend = "server"
    settings.sinks.clickhouse.url = chdb_http_url
    settings.sinks.clickhouse.database = "lineguard_open_store"
    store = open_store(settings)
    try:
        assert isinstance(store, ServerStore)
        store.create_schema()
        assert store.count_frames() == 0
    finally:
        store.close()
