"""ClickHouse for a plant: TTL, codecs, UUID frame ids, replay-stable keys, the cluster DDL
(parsed by the real engine), the bytes per verdict row, and the frames topic's retention."""

from __future__ import annotations

import dataclasses
import random
import re
import sys
import time
import uuid
from pathlib import Path

import pytest

from lineguard.config import KafkaConfig
from lineguard.kafka.admin import _wanted_topics
from lineguard.schemas import Verdict, topics
from lineguard.stores import ChdbStore
from lineguard.stores.verdict_schema import schema_statements

sys.path.insert(0, str(Path(__file__).parent))
from sink_fixtures import make_verdicts  # noqa: E402

DAY_NS = 86_400 * 10**9


@pytest.fixture
def store(tmp_path: Path):
    with ChdbStore(tmp_path / "chdb", ttl_days=30) as s:
        s.create_schema()
        yield s


def _recent(count: int, days_ago: float, seed: int = 7) -> list[Verdict]:
    """make_verdicts moved to ``days_ago`` before now."""
    shift = time.time_ns() - int(days_ago * DAY_NS) - make_verdicts(1, seed=seed)[0].captured_at_ns
    return [dataclasses.replace(v, captured_at_ns=v.captured_at_ns + shift, scored_at_ns=v.scored_at_ns + shift)
            for v in make_verdicts(count, seed=seed)]


def _raw_rows(store: ChdbStore) -> int:
    return store.query(f"SELECT count() AS n FROM {store.database}.verdicts")[0]["n"]


def test_ttl_drops_whole_expired_parts_and_keeps_the_rest(store: ChdbStore) -> None:
    engine = store.query("SELECT engine_full FROM system.tables WHERE database = 'lineguard' AND name = 'verdicts'")
    assert "+ toIntervalDay(30)" in engine[0]["engine_full"]
    assert "ttl_only_drop_parts = 1" in engine[0]["engine_full"]
    store.insert_verdicts(_recent(50, days_ago=40, seed=1))
    fresh = _recent(60, days_ago=2, seed=2)
    store.insert_verdicts(fresh)
    store.execute("OPTIMIZE TABLE lineguard.verdicts FINAL")  # TTL runs on merges
    assert _raw_rows(store) == store.count_frames() == len(fresh)


def test_a_replay_lands_on_the_same_key_and_the_latest_verdict_wins(store: ChdbStore) -> None:
    first = _recent(40, days_ago=1)
    store.insert_verdicts(first)
    # replays rescored by another model on another processor, later: the key must not move
    rescored = [dataclasses.replace(v, score=1 - v.score, is_defective=not v.is_defective, model_version="v9",
                                    processor_id="other", scored_at_ns=v.scored_at_ns + 10**9) for v in first[:15]]
    store.insert_verdicts(rescored)
    store.insert_verdicts(first[:15])  # and an older copy arriving last
    expected = {v.frame_id: v for v in first} | {v.frame_id: v for v in rescored}
    # before any merge: the view picks each frame's latest verdict, no FINAL
    latest = store.query("SELECT frame_id, score, is_defective, model_version FROM lineguard.verdicts_latest")
    assert {r["frame_id"]: (r["score"], r["is_defective"], r["model_version"]) for r in latest} == {
        f: (v.score, v.is_defective, v.model_version) for f, v in expected.items()}
    store.execute("OPTIMIZE TABLE lineguard.verdicts FINAL")  # ReplacingMergeTree collapses on the sort key
    rows = store.query("SELECT frame_id, score, model_version FROM lineguard.verdicts")
    assert {r["frame_id"]: (r["score"], r["model_version"]) for r in rows} == {
        f: (v.score, v.model_version) for f, v in expected.items()}
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["frame_id"]) for r in rows)  # the API/MES form


def test_camera_and_product_filters_use_the_primary_key_through_the_latest_view(store: ChdbStore) -> None:
    store.insert_verdicts(_recent(300, days_ago=1))
    for where, keys in (("line_id = 'lineA' AND camera_id = 'lineA-cam1'", ("line_id", "camera_id")),
                        ("product = 'nut'", ("product",))):
        plan = "\n".join(r["explain"] for r in store.query(
            f"EXPLAIN indexes = 1 SELECT count() FROM lineguard.verdicts_latest WHERE {where}"))
        primary = plan[plan.index("PrimaryKey"):]
        assert all(key in primary.split("Condition")[0] for key in keys), plan
        assert "FINAL" not in plan


def _parse(store: ChdbStore, statement: str) -> str:
    return "\n".join(r["explain"] for r in store.query(f"EXPLAIN AST {statement}"))


def test_the_cluster_ddl_parses_in_the_real_engine_and_matches_the_single_node_table(store: ChdbStore) -> None:
    cluster = schema_statements("lineguard", ttl_days=365, cluster="plant")
    assert all(" ON CLUSTER plant" in s for s in cluster)
    for statement in cluster:
        _parse(store, statement)  # raises on a syntax error
    local, distributed = cluster[1], cluster[2]
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/lineguard/verdicts', '{replica}', scored_at_ns)" in local
    ast = _parse(store, distributed)
    # sharded by the frame: every replay of a frame reaches the shard that holds it
    assert "Function Distributed" in ast and "Function cityHash64" in ast and "Identifier frame_id" in ast
    with pytest.raises(Exception, match="SYNTAX_ERROR"):
        _parse(store, local.replace("ORDER BY", "ORDER BY ((", 1))  # the check can fail
    # The replicated table is the single-node one with another engine: run that form for real.
    as_single = (local.replace(" ON CLUSTER plant", "")
                 .replace("verdicts_local", "verdicts_like_local")
                 .replace("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/lineguard/verdicts', "
                          "'{replica}', scored_at_ns)", "ReplacingMergeTree(scored_at_ns)"))
    store.execute(as_single)
    columns = "SELECT name, type, compression_codec FROM system.columns WHERE database = 'lineguard' AND table = {t:String}"
    assert store.query(columns, {"t": "verdicts_like_local"}) == store.query(columns, {"t": "verdicts"})


def test_bytes_per_verdict_row_after_codecs(store: ChdbStore) -> None:
    """100k rows like 2 lines x 2 cameras at 20 fps; the figure docs/deployment.md quotes."""
    rng = random.Random(1)
    start = time.time_ns() - DAY_NS
    base = make_verdicts(1)[0]
    rows = []
    for i in range(100_000):
        line, t, score = f"line-{i % 2}", start + (i // 4) * 50_000_000 + rng.randrange(10**6), rng.random()
        rows.append(dataclasses.replace(
            base, frame_id=uuid.uuid4().hex, line_id=line, camera_id=f"{line}-cam{(i // 2) % 2}", seq=i // 4,
            captured_at_ns=t, scored_at_ns=t + rng.randrange(20_000_000, 80_000_000), score=score,
            is_defective=score > 0.8, heatmap_key=f"{line}/2025/01/01/{i:032x}.png" if score > 0.8 else None,
            queue_wait_ms=rng.random() * 20, inference_ms=5 + rng.random() * 3))
    for k in range(0, len(rows), 20_000):
        store.insert_verdicts(rows[k:k + 20_000])
    # wide parts: per-column sizes (small parts are "compact", one file for all columns)
    store.execute("ALTER TABLE lineguard.verdicts MODIFY SETTING min_bytes_for_wide_part = 0")
    store.execute("OPTIMIZE TABLE lineguard.verdicts FINAL")
    per_column = {r["column"]: r["bytes"] / len(rows) for r in store.query(
        "SELECT column, sum(column_data_compressed_bytes) AS bytes FROM system.parts_columns "
        "WHERE database = 'lineguard' AND table = 'verdicts' AND active GROUP BY column")}
    total = sum(per_column.values())
    print("\nbytes per row: " + ", ".join(f"{c}={b:.1f}" for c, b in sorted(per_column.items(), key=lambda x: -x[1]))
          + f"; total={total:.1f}")
    # no stored duplicate instants: Verdict's fields, plus the arrival time ClickHouse stamps itself
    assert set(per_column) == {f.name for f in dataclasses.fields(Verdict)} | {"ingested_at"}
    assert per_column["frame_id"] <= 17  # 16-byte UUIDs (random: nothing to compress)
    # 8 raw bytes each; what is left is the ~1 ms capture jitter (random here)
    assert per_column["captured_at_ns"] < 5 and per_column["seq"] < 1  # DoubleDelta / Delta at work
    assert total < 64


def test_frames_topic_retention_is_a_setting() -> None:
    cfg = KafkaConfig(frames_retention_ms=3_600_000)
    wanted = {t.topic: t for t in _wanted_topics(cfg, ["l1"], live_brokers=1)}
    assert wanted[topics.frames("l1")].config["retention.ms"] == "3600000"
    assert wanted[topics.verdicts("l1")].config["retention.ms"] == str(cfg.verdict_retention_ms)
    assert KafkaConfig().frames_retention_ms == 24 * 3600 * 1000
