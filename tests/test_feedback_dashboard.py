"""Operator feedback end to end, in a real headless Chromium: an operator marks a defective verdict
as a false alarm on the dashboard; the API publishes the Label to ``lineguard.labels.<line>`` (real
Kafka); ``lineguard sink labels`` writes it to ClickHouse; the dashboard's precision for the line
drops accordingly. Also through the API alone: labels with the key (operator from X-Operator or the
key's id), refused without it or when the label does not fit the verdict, and the passed-part sample.

ClickHouse: the API and the label sink both need it at once, and embedded chdb allows one process
per data directory, so both use the server backend against tests/chdb_http.py (the real ClickHouse
engine, chdb, behind ClickHouse's HTTP interface) on a copy of the pipeline's data.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import httpx
import pytest

from lineguard.analytics.schema import create_analytics_schema, load_model_references
from lineguard.kafka import read_topic
from lineguard.schemas import Label, topics
from lineguard.stores import ChdbStore, ServerStore

from analytics_dataset import get_dataset
from api_server import ApiServer
from fault_helpers import ChdbHttpServer
from feedback_figures import feedback
from pipeline_helpers import Component
from test_dashboard import browser  # noqa: F401 - fixture: Debian's chromium via playwright

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
KEY = "feedback-key"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def plant(stack, tmp_path_factory):
    dataset = get_dataset(stack, tmp_path_factory)
    root = tmp_path_factory.mktemp("feedback")
    chdb = dataset.copy_chdb(root / "chdb")
    store = ChdbStore(chdb)
    try:
        create_analytics_schema(store)
        load_model_references(store, dataset.model_archive)
    finally:
        store.close()
    clickhouse = ChdbHttpServer(chdb, root / "chdb-http.log")
    clickhouse.start()
    env = {**dataset.s3_env,
           "LINEGUARD_SINKS__CLICKHOUSE__BACKEND": "server",
           "LINEGUARD_SINKS__CLICKHOUSE__URL": clickhouse.url,
           "LINEGUARD_API__API_KEYS": json.dumps([KEY]),
           "LINEGUARD_PROCESSOR__MODEL_DIR": str(dataset.models)}
    api = ApiServer(env, root / "serve.log")
    client = httpx.Client(base_url=api.url, timeout=60, headers={"X-API-Key": KEY})
    try:
        yield {"api": api, "client": client, "dataset": dataset, "env": env, "clickhouse": clickhouse,
               "root": root, "group": f"labels-{uuid.uuid4().hex[:6]}"}
    finally:
        client.close()
        api.stop()
        clickhouse.stop()


def run_label_sink(plant) -> int:
    """``lineguard sink labels`` until idle, always in the same group (each run writes what is new)."""
    lines = ",".join(plant["dataset"].lines)
    sink = Component(["sink", "labels", "--lines", lines, "--group", plant["group"], "--until-idle", "3"],
                     plant["env"], plant["root"] / f"sink-labels-{uuid.uuid4().hex[:4]}.log")
    assert sink.wait(120) == 0, sink.output()[-3000:]
    match = re.search(r"sink: kind=labels written=(\d+) deadletter=0 ", sink.output())
    assert match, sink.output()[-3000:]
    return int(match.group(1))


def labels_on_kafka(plant) -> list[Label]:
    names = [topics.labels(line) for line in plant["dataset"].lines]
    return [Label.decode(r.value) for r in read_topic(plant["dataset"].kafka, names)]


def week_defects(dataset, line: str) -> list:
    since_ns = (dt.datetime.now(UTC) - dt.timedelta(days=7)).timestamp() * 1e9
    return sorted((v for v in dataset.latest().values()
                   if v.line_id == line and v.is_defective and v.captured_at_ns >= since_ns),
                  key=lambda v: v.captured_at_ns)


def test_labels_through_the_api(plant):
    client, dataset = plant["client"], plant["dataset"]
    line = dataset.lines[1]
    defective = week_defects(dataset, line)[0]
    answer = client.post(f"/verdicts/{defective.frame_id}/label", json={"label": "confirmed_defect", "note": "dent"},
                         headers={"X-Operator": "bob"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["line_id"], body["camera_id"], body["operator"], body["topic"]) == (
        line, defective.camera_id, "bob", topics.labels(line))
    # Without an operator name: the key's id, never the key.
    anonymous = client.post(f"/verdicts/{defective.frame_id}/label", json={"label": "confirmed_defect"}).json()
    assert re.fullmatch(r"key-[0-9a-f]{8}", anonymous["operator"]) and KEY not in anonymous["operator"]
    assert httpx.post(f"{plant['api'].url}/verdicts/{defective.frame_id}/label",
                      json={"label": "false_alarm"}).status_code == 401
    missed = client.post(f"/verdicts/{defective.frame_id}/label", json={"label": "missed_defect"})
    assert missed.status_code == 409 and missed.json()["error"] == "label_mismatch"
    assert client.post(f"/verdicts/{'0' * 32}/label", json={"label": "false_alarm"}).status_code == 404
    assert client.post(f"/verdicts/{defective.frame_id}/label", json={"label": "maybe"}).status_code == 422

    sample = client.get("/review/passed", params={"line": line, "n": 5, "hours": 24 * 10}).json()
    latest = dataset.latest()
    assert len(sample) == 5 and all(not latest[s["frame_id"]].is_defective and s["line_id"] == line for s in sample)
    passed = sample[0]["frame_id"]
    assert client.post(f"/verdicts/{passed}/label", json={"label": "missed_defect"}).status_code == 202
    on_kafka = sorted((l for l in labels_on_kafka(plant) if l.line_id == line), key=lambda l: l.labelled_at_ns)
    assert [(l.frame_id, l.label, l.operator) for l in on_kafka] == [
        (defective.frame_id, "confirmed_defect", "bob"), (defective.frame_id, "confirmed_defect", anonymous["operator"]),
        (passed, "missed_defect", anonymous["operator"])]
    assert on_kafka[0].note == "dent" and on_kafka[0].model_version == defective.model_version


def precision_on_page(page, line: str) -> tuple[str, str]:
    cell = page.locator(f"#feedback tr[data-line='{line}'] td.precision")
    return cell.text_content(), cell.get_attribute("data-value")


def test_operator_marks_a_false_alarm_and_the_precision_drops(plant, browser):  # noqa: F811
    api, client, dataset = plant["api"], plant["client"], plant["dataset"]
    line = dataset.lines[0]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{api.url}/dashboard#key={KEY}")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    shown = page.eval_on_selector_all(".defect:not(.passed)", "cards => cards.map(c => c.dataset.frame)")
    assert shown and page.locator(".defect:not(.passed) button.label-btn").count() == 2 * len(shown)
    assert page.locator("#passed .defect.passed button[data-label=missed_defect]").count() > 0
    target = next(v for v in reversed(week_defects(dataset, line)) if v.frame_id in shown)

    # Before: three defects of the line confirmed (through the API), written by the label sink.
    for verdict in [v for v in reversed(week_defects(dataset, line)) if v.frame_id not in shown][:3]:
        assert client.post(f"/verdicts/{verdict.frame_id}/label", json={"label": "confirmed_defect"},
                           headers={"X-Operator": "seed"}).status_code == 202
    run_label_sink(plant)
    page.reload()
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    before = precision_on_page(page, line)

    # The operator, on the dashboard: a false alarm.
    page.fill("#operator", "alice")
    page.dispatch_event("#operator", "change")
    page.click(f".defect[data-frame='{target.frame_id}'] button[data-label=false_alarm]")
    page.wait_for_selector(f".defect[data-frame='{target.frame_id}'] .label-state[data-saved=false_alarm]",
                           timeout=30_000)
    on_kafka = [l for l in labels_on_kafka(plant) if l.frame_id == target.frame_id]
    assert [(l.label, l.operator, l.line_id) for l in on_kafka] == [("false_alarm", "alice", line)]

    written = run_label_sink(plant)
    server = ServerStore(plant["clickhouse"].url)
    try:
        label_rows = server.query(f"SELECT label, operator FROM {server.database}.labels_latest "
                                  "WHERE frame_id = toUUID({f:String})", {"f": target.frame_id})
        total_rows = server.query(f"SELECT count() AS n FROM {server.database}.labels_latest")[0]["n"]
    finally:
        server.close()
    assert label_rows == [{"label": "false_alarm", "operator": "alice"}]
    page.reload()
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    after = precision_on_page(page, line)

    # The figures the page must show, from the raw verdicts and every label on the topics.
    since = dt.datetime.now(UTC) - dt.timedelta(days=7)
    week = lambda v: v.captured_at_ns >= since.timestamp() * 1e9  # noqa: E731
    expected = feedback(dataset.verdicts, labels_on_kafka(plant), lambda v: (v.line_id,), week)[(line,)]
    assert expected["confirmed"] == 3 and expected["false_alarms"] == 1
    assert before == ("100.0 %", "1")
    assert after == ("75.0 %", "0.75") and float(after[1]) == pytest.approx(expected["precision"])
    assert written >= 1 and total_rows == len({l.frame_id for l in labels_on_kafka(plant)})
    assert not errors, errors
    print(f"\nfeedback: precision before={before[0]} after={after[0]} label_rows={total_rows} "
          f"(line {line}: confirmed={expected['confirmed']} false_alarms={expected['false_alarms']}, "
          f"labels on Kafka={len(labels_on_kafka(plant))}, last sink run wrote {written})")
    page.close()
