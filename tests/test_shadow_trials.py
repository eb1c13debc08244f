"""Shadow trials: a candidate scores the same frames beside the live model, its verdicts kept apart
(``Outcome.shadow`` -> lineguard.shadow.<line> -> ``shadow_verdicts``), compared with the live ones in
ClickHouse; promote / rollback / shadow recorded in ``model_events``."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from test_model_distribution import POLL_S, build
from test_processor_core import _frame, _normal

from lineguard.analytics.shadow import compare, format_compare
from lineguard.cli import main as cli_main
from lineguard.config import ProcessorConfig
from lineguard.inspection import ModelRegistry
from lineguard.inspection.registry import ModelCache, ModelStore
from lineguard.processors.scoring import BatchScorer, Work
from lineguard.schemas import ImageLimits, Label, Verdict, new_frame_id, topics
from lineguard.stores import ChdbStore, LocalFolderStore


def _score(scorer: BatchScorer, line: str, n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    outcomes = scorer.score([Work(_frame(_normal(rng), line=line), time.time_ns()) for _ in range(n)])
    assert all(o.failure is None for o in outcomes), [o.failure for o in outcomes]
    return outcomes


def _until(scorer: BatchScorer, line: str, live: str, shadow: str | None, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = _score(scorer, line)
        got = [(o.verdict.model_version, o.shadow.model_version if o.shadow else None) for o in outcomes]
        if all(g == (live, shadow) for g in got):
            return outcomes
        assert time.monotonic() < deadline, (got, live, shadow)
        time.sleep(2 * POLL_S)


def test_topic_of_shadow_verdicts_is_its_own():
    assert topics.shadow("line1") == "lineguard.shadow.line1"
    assert topics.line_of(topics.shadow("line1")) == "line1"
    import re
    assert not re.match(topics.pattern("verdicts"), topics.shadow("line1"))


def test_shadow_candidate_from_the_object_store_scores_beside_the_live_model(tmp_path):
    models = ModelStore(LocalFolderStore(tmp_path / "bucket"))
    for seed, version in enumerate(["v1", "v2"], start=1):
        models.push(build(tmp_path, "widget", version, seed), product="widget")
    models.promote("widget", "v1")
    models.shadow("widget", "v2", line="line1")
    cache = ModelCache(models, tmp_path / "cache")
    registry = ModelRegistry.from_config(ProcessorConfig(model_poll_s=POLL_S, model_source="object_store"), cache)
    scorer = BatchScorer(ProcessorConfig(model_dir=cache.cache_dir), ImageLimits(), registry)

    outcomes = _until(scorer, "line1", "v1", "v2")
    for o in outcomes:  # the same frame, the candidate's own score, threshold and version
        assert o.shadow.frame_id == o.verdict.frame_id and o.shadow.heatmap_key is None
        assert o.shadow.threshold == registry.shadow_for("widget", "line1").engine.manifest.thresholds.value
        assert o.shadow.score != o.verdict.score
    _until(scorer, "line2", "v1", None)  # a line-specific trial stays on its line
    assert registry.loaded() and all(m.folder in ("widget",) for m in registry.loaded())  # never a product

    models.promote("widget", "v2", line="line1")  # the candidate goes live: the trial ends, without a restart
    assert models.shadowed(models.pointer("widget")) == {}
    _until(scorer, "line1", "v2", None)
    models.shadow("widget", "v1")  # a product-wide candidate: every line
    _until(scorer, "line2", "v1", "v1")
    models.shadow("widget", None)
    _until(scorer, "line2", "v1", None)
    assert models.rollback("widget", line="line1") is None
    _until(scorer, "line1", "v1", None)


def test_a_failing_shadow_never_touches_the_live_verdicts(tmp_path, caplog):
    served = tmp_path / "models"
    shutil.copytree(build(tmp_path, "widget", "v1", 1), served / "widget")
    shutil.copytree(build(tmp_path, "widget", "v2", 2), served / ".shadow" / "widget")  # a local-folder trial
    registry = ModelRegistry(served, poll_s=POLL_S)
    scorer = BatchScorer(ProcessorConfig(model_dir=served), ImageLimits(), registry)
    assert [(o.verdict.model_version, o.shadow.model_version) for o in _score(scorer, "line1")] == [("v1", "v2")] * 3

    def broken(*_a, **_k):
        raise RuntimeError("candidate exploded")

    shadow_engine = registry.shadow_for("widget", "line1").engine
    before = REGISTRY.get_sample_value("lineguard_processor_shadow_failures_total", {"line": "line7"}) or 0.0
    object.__setattr__(shadow_engine, "score", broken) if dataclasses.is_dataclass(shadow_engine) else \
        setattr(shadow_engine, "score", broken)
    outcomes = _score(scorer, "line7")
    assert [(o.verdict.model_version, o.shadow) for o in outcomes] == [("v1", None)] * 3
    after = REGISTRY.get_sample_value("lineguard_processor_shadow_failures_total", {"line": "line7"})
    assert after == before + 3
    shutil.rmtree(served / ".shadow" / "widget")  # the trial folder removed: no shadow at all
    assert [o.shadow for o in _score(scorer, "line1")] == [None] * 3


def _verdict(frame_id: str, version: str, score: float, defective: bool, line: str = "cmp1") -> Verdict:
    now = time.time_ns()
    return Verdict(frame_id=frame_id, line_id=line, camera_id="cam1", product="widget", seq=0, captured_at_ns=now,
                   scored_at_ns=now, model_name="widget", model_version=version, score=score, threshold=1.0,
                   is_defective=defective, heatmap_key=None, queue_wait_ms=0.0, inference_ms=1.0,
                   processor_id="p1")


def test_compare_joins_shadow_and_live_rows_per_frame(tmp_path):
    # (live defective, shadow defective, label) per frame
    cases = ([(False, False, None)] * 5 + [(True, True, "confirmed_defect")] * 2 + [(True, False, "false_alarm")]
             + [(False, True, "missed_defect")] * 2)
    live, shadow, labels = [], [], []
    for i, (lv, sv, label) in enumerate(cases):
        frame_id = new_frame_id()
        live.append(_verdict(frame_id, "v1", float(i), lv))
        shadow.append(_verdict(frame_id, "v2", float(i) + 0.5, sv))
        if label:
            labels.append(Label(frame_id=frame_id, line_id="cmp1", camera_id="cam1", product="widget",
                                model_version="v1", label=label, labelled_at_ns=time.time_ns(), operator="op"))
    store = ChdbStore(tmp_path / "chdb")
    try:
        store.create_schema()
        store.insert_verdicts(live)
        store.insert_shadow_verdicts(shadow)
        store.insert_shadow_verdicts(shadow[:3])  # replays collapse
        store.insert_labels(labels)
        assert store.count_frames() == len(cases)  # the shadow rows never land in (or collapse with) verdicts
        [result] = compare(store, "cmp1")
    finally:
        store.close()
    assert result["frames"] == 10 and result["live_versions"] == ["v1"] and result["shadow_version"] == "v2"
    assert (result["both_pass"], result["both_defective"], result["live_only"], result["shadow_only"]) == (5, 2, 1, 2)
    assert result["agreement"] == pytest.approx(0.7)
    assert result["live_score_quantiles"][0.5] == pytest.approx(4.5)
    assert result["shadow_score_quantiles"][0.5] == pytest.approx(5.0)
    assert result["labelled"] == 5
    # live: tp 2, fp 1, fn 2; shadow: tp 4, fp 0, fn 0
    assert result["live_precision"] == pytest.approx(2 / 3) and result["live_recall"] == pytest.approx(0.5)
    assert result["shadow_precision"] == 1.0 and result["shadow_recall"] == 1.0
    text = format_compare("cmp1", [result])
    assert "agreement 70.0%" in text and "compare: line=cmp1 live=v1 shadow=v2 frames=10" in text


def test_models_cli_shadow_promote_rollback_are_recorded(tmp_path, capsys, monkeypatch):
    config = tmp_path / "lineguard.yml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n"
                      f"sinks: {{object_store: {{backend: local, local_dir: {tmp_path / 'bucket'}}}}}\n")
    monkeypatch.setenv("USER", "alice")
    run = lambda *args: cli_main(["models", *args, "--config", str(config)])  # noqa: E731
    for seed, version in enumerate(["v1", "v2"], start=1):
        assert run("push", str(build(tmp_path, "widget", version, seed))) == 0
    assert run("promote", "widget", "v1", "--reason", "first model") == 0
    assert run("shadow", "--product", "widget", "--version", "v2", "--line", "line1", "--reason", "trial") == 0
    assert run("promote", "widget", "v2", "--line", "line1", "--reason", "agrees 99%", "--by", "bob") == 0
    assert run("rollback", "widget", "--line", "line1", "--reason", "false alarms") == 0
    assert run("shadow", "--product", "widget", "--version", "v9") == 2
    assert "no complete version 'v9'" in capsys.readouterr().err
    assert run("compare", "--line", "line1") == 0
    assert "compare: line=line1 frames=0" in capsys.readouterr().out
    store = ChdbStore(tmp_path / "state" / "chdb")
    try:
        rows = store.query("SELECT action, line_id, version, previous_version, by, reason FROM lineguard.model_events "
                           "ORDER BY event_at_ns")
    finally:
        store.close()
    assert [tuple(r.values()) for r in rows] == [
        ("promote", "", "v1", "", "alice", "first model"),
        ("shadow", "line1", "v2", "", "alice", "trial"),
        ("promote", "line1", "v2", "v1", "bob", "agrees 99%"),
        ("rollback", "line1", "v1", "v2", "alice", "false alarms"),
    ]
    assert ModelStore(LocalFolderStore(tmp_path / "bucket")).shadowed(
        ModelStore(LocalFolderStore(tmp_path / "bucket")).pointer("widget")) == {}
