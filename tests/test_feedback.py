"""Operator feedback without a broker: the Label message and its topic, its JSON Schema, the
``labels`` table (the latest label of a frame wins) and the precision / recall cookbook queries,
held against figures computed in Python from the raw verdicts and labels."""

from __future__ import annotations

import datetime as dt
import json
import random

import msgpack
import pytest

from lineguard.analytics import cookbook
from lineguard.schemas import LABELS, Label, SchemaError, topics
from lineguard.schemas.jsonschema import LABEL_SCHEMA_FILE, schema_for
from lineguard.stores import ChdbStore

from feedback_figures import feedback, label_for, operator_labels
from sink_fixtures import BASE_NS, HOUR_NS, make_verdicts

UTC = dt.timezone.utc
WINDOW = {"since": dt.datetime.fromtimestamp(BASE_NS / 1e9, UTC),
          "until": dt.datetime.fromtimestamp((BASE_NS + 3 * HOUR_NS) / 1e9, UTC)}


def _label(**changes) -> Label:
    fields = dict(frame_id="ab" * 16, line_id="press1", camera_id="cam1", product="washer", model_version="v2",
                  label="false_alarm", labelled_at_ns=1_714_978_800 * 10**9, operator="alice", note="glare")
    return Label(**{**fields, **changes})


def test_label_round_trips_and_is_validated():
    label = _label()
    assert Label.decode(label.encode()) == label
    assert Label.decode(_label(note=None).encode()).note is None
    for bad in ({"label": "maybe"}, {"note": "x" * 501}, {"operator": ""}, {"frame_id": ""},
                {"labelled_at_ns": 0}):
        with pytest.raises(SchemaError) as info:
            Label.decode(_label(**bad).encode())
        assert info.value.reason == "invalid_field", bad
    assert set(LABELS) == {"confirmed_defect", "false_alarm", "missed_defect"}
    assert topics.labels("press1") == "lineguard.labels.press1"
    assert topics.line_of(topics.labels("press1")) == "press1"


def test_label_json_schema_is_current_and_validates():
    jsonschema = pytest.importorskip("jsonschema")
    committed = json.loads(LABEL_SCHEMA_FILE.read_text())
    assert committed == schema_for(Label), "regenerate: python -m lineguard.schemas.jsonschema"
    doc = msgpack.unpackb(_label().encode(), raw=False)
    jsonschema.validate(doc, committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "label": "maybe"}, committed)


@pytest.fixture()
def store(tmp_path):
    store = ChdbStore(tmp_path / "chdb")
    try:
        store.create_schema()
        yield store
    finally:
        store.close()


def test_the_latest_label_of_a_frame_wins(store):
    verdict = make_verdicts(1)[0]
    first = label_for(verdict, "confirmed_defect", BASE_NS + 10)
    second = label_for(verdict, "false_alarm", BASE_NS + 20, operator="bob")
    store.insert_labels([second])
    store.insert_labels([first, first])  # older, and a replay of it, inserted last
    rows = store.query(f"SELECT frame_id, label, operator FROM {store.database}.labels_latest")
    assert rows == [{"frame_id": verdict.frame_id, "label": "false_alarm", "operator": "bob"}]
    store.execute(f"OPTIMIZE TABLE {store.database}.labels FINAL")
    assert store.query(f"SELECT label FROM {store.database}.labels") == [{"label": "false_alarm"}]


@pytest.mark.parametrize("dimension,key", [
    ("line", lambda v: (v.line_id,)),
    ("camera", lambda v: (v.line_id, v.camera_id)),
    ("model_version", lambda v: (v.line_id, v.model_name, v.model_version)),
])
def test_precision_and_recall_match_python(store, dimension, key):
    verdicts = make_verdicts(400, seed=11)
    # A re-scored frame (another model version, now passed): its label still judges the part.
    rescored = verdicts[0]
    verdicts.append(type(rescored)(**{**rescored.__dict__, "scored_at_ns": rescored.scored_at_ns + 1,
                                      "model_version": "2024.06.1", "is_defective": not rescored.is_defective}))
    labels = operator_labels(verdicts, BASE_NS + 4 * HOUR_NS)
    labels.append(label_for(rescored, "confirmed_defect", BASE_NS + 5 * HOUR_NS))
    random.Random(3).shuffle(labels)  # arrival order must not matter
    store.insert_verdicts(verdicts)
    store.insert_labels(labels)
    columns = {"line": ["line_id"], "camera": ["line_id", "camera_id"],
               "model_version": ["line_id", "model_name", "model_version"]}[dimension]
    rows = cookbook.run(store, f"feedback_by_{dimension}", **WINDOW)
    got = {tuple(r[c] for c in columns): {k: r[k] for k in ("labelled", "confirmed", "false_alarms", "missed",
                                                            "precision", "recall")} for r in rows}
    expected = feedback(verdicts, labels, key)
    assert got.keys() == expected.keys() and len(got) >= 2
    for k, row in expected.items():
        for name, value in row.items():
            assert got[k][name] == pytest.approx(value) if value is not None else got[k][name] is None, (k, name)
    assert sum(r["false_alarms"] for r in expected.values()) > 0 and sum(r["missed"] for r in expected.values()) > 0
    one_line = cookbook.run(store, f"feedback_by_{dimension}", line_id="lineA", **WINDOW)
    assert {r["line_id"] for r in one_line} == {"lineA"}


def test_passed_sample_is_stable_passed_frames_with_their_labels(store):
    verdicts = make_verdicts(200, seed=5)
    store.insert_verdicts(verdicts)
    passed = {v.frame_id for v in verdicts if v.line_id == "lineB" and not v.is_defective}
    first = cookbook.run(store, "passed_sample", line_id="lineB", limit=10, **WINDOW)
    assert len(first) == 10 and {r["frame_id"] for r in first} <= passed
    assert all(r["label"] == "" for r in first)
    chosen = next(v for v in verdicts if v.frame_id == first[3]["frame_id"])
    store.insert_labels([label_for(chosen, "missed_defect", BASE_NS + 4 * HOUR_NS)])
    again = cookbook.run(store, "passed_sample", line_id="lineB", limit=10, **WINDOW)
    assert [r["frame_id"] for r in again] == [r["frame_id"] for r in first]  # the same sample, reload after reload
    assert [r["label"] for r in again].count("missed_defect") == 1 and again[3]["label"] == "missed_defect"
