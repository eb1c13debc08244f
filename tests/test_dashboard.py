"""The operator dashboard in a real headless Chromium (Debian's, driven by Playwright) against
``lineguard serve`` on the pipeline's demo dataset: charts drawn, heatmaps loaded from the S3
server, model versions shown; a screenshot goes to artifacts/dashboard.png.

ClickHouse: the API opens the pipeline's chdb data read-side after the sink finished (a copy,
so other tests keep theirs); with chdb only one process may hold the data directory, which is
why a plant runs the server backend when the dashboard must show live data (see README).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from lineguard.analytics.schema import create_analytics_schema, load_model_references
from lineguard.stores import ChdbStore

from analytics_dataset import get_dataset
from api_server import ApiServer

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
KEY = "dashboard-key"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(stack, tmp_path_factory):
    dataset = get_dataset(stack, tmp_path_factory)
    root = tmp_path_factory.mktemp("dashboard")
    chdb = dataset.copy_chdb(root / "chdb")
    # What `lineguard report --model-dir` does for archived models: their drift reference.
    store = ChdbStore(chdb)
    try:
        create_analytics_schema(store)
        load_model_references(store, dataset.model_archive)
    finally:
        store.close()
    env = {**dataset.s3_env,
           "LINEGUARD_SINKS__CLICKHOUSE__CHDB_PATH": str(chdb),
           "LINEGUARD_API__API_KEYS": json.dumps([KEY]),
           "LINEGUARD_PROCESSOR__MODEL_DIR": str(dataset.models)}
    api = ApiServer(env, root / "serve.log")
    try:
        yield api, dataset
    finally:
        api.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run tests/browser/install.sh", pytrace=False)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="lineguard-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_renders_charts_heatmaps_and_model_versions(server, browser):
    api, dataset = server
    page = browser.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{api.url}/dashboard#key={KEY}")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    # Every heatmap <img> has loaded (or failed); at least one must show a picture.
    page.wait_for_function("[...document.querySelectorAll('img.heatmap')].every(i => i.complete && i.src)",
                           timeout=30_000)
    widths = page.eval_on_selector_all("img.heatmap", "imgs => imgs.map(i => i.naturalWidth)")
    latest = dataset.latest()
    assert len(widths) == 12  # the newest twelve defective frames of the week
    assert widths and all(w == 128 for w in widths), widths  # the overlays are the 128 px frames

    # The page's default window: the last 7 days.
    since_ns = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=7)).timestamp() * 1e9
    week = [v for v in latest.values() if v.captured_at_ns >= since_ns]
    lines = page.eval_on_selector_all("#lines tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))")
    newest = {line: max((v for v in week if v.line_id == line), key=lambda v: v.captured_at_ns) for line in dataset.lines}
    assert [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in lines] == [
        (line, newest[line].model_name, newest[line].model_version, sum(1 for v in week if v.line_id == line),
         sum(1 for v in week if v.line_id == line and v.is_defective))
        for line in sorted(dataset.lines)]

    rate = page.eval_on_selector_all("#rate-chart path.series",
                                     "ps => ps.map(p => [p.dataset.series, +p.dataset.points, p.getAttribute('d').length])")
    assert sorted(r[0] for r in rate) == sorted(dataset.lines)
    assert all(points >= 5 and d > 50 for _, points, d in rate), rate  # nine days of daily points
    drift = page.eval_on_selector_all("#drift-chart path.series", "ps => ps.map(p => p.dataset.series)")
    assert f"{dataset.lines[0]} nut v1" in drift and f"{dataset.lines[1]} washer v2" in drift, drift
    assert len(drift) >= 4
    assert page.locator("#drift-chart .guide").count() == 2

    # Nothing from outside the app (no CDN): the page, its files, the API and blob: images.
    foreign = [u for u in requests if not u.startswith((api.url, "blob:", "data:"))]
    assert not foreign, foreign
    assert not errors, errors
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    print(f"\ndashboard: {len(lines)} lines, {len(rate)} defect-rate series, {len(drift)} drift series, "
          f"{len(widths)} heatmaps loaded; screenshot {ARTIFACTS / 'dashboard.png'}")
    page.close()


def test_dashboard_asks_for_a_key_and_refuses_a_wrong_one(server, browser):
    api, _ = server
    page = browser.new_page()
    page.goto(f"{api.url}/dashboard")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#key", "not-the-key")
    page.click("#login button")
    page.wait_for_selector("#login-error:text('refused')", timeout=15_000)
    assert page.locator("#content").is_hidden()
    page.fill("#key", KEY)
    page.click("#login button")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    assert page.locator("#lines tbody tr").count() == 2
    page.close()
