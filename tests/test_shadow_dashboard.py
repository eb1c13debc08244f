"""The dashboard's shadow-trial panel, in a real headless Chromium against ``lineguard serve``: live and
shadow verdicts with known disagreements (some with heatmaps) and a few labels are written to the chdb
store the API reads; the panel shows the agreement and figures of ``lineguard models compare`` and one
thumbnail per disagreement, each saying which model flagged the frame. ``GET /api/shadow`` is checked
against :func:`lineguard.analytics.shadow.compare` itself.

No Kafka or S3: the rows go straight into chdb (closed before the API opens it: one process per data
directory) and the heatmaps into the local object store the API reads.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from lineguard.analytics.shadow import compare
from lineguard.components import component_env
from lineguard.schemas import Label, Verdict, new_frame_id, topics
from lineguard.stores import ChdbStore, LocalFolderStore

from api_server import ApiServer
from test_dashboard import ARTIFACTS, browser  # noqa: F401 - browser: Debian's chromium via playwright

KEY = "shadow-key"
LINE, OTHER = "shd1", "shd2"  # OTHER has live verdicts only: no trial
HEATMAP_PX = 64
# (live defective, shadow defective, label) per frame of LINE, oldest first
CASES = ([(False, False, None)] * 12 + [(True, True, "confirmed_defect")] * 3 + [(True, False, "false_alarm")] * 2
         + [(True, False, None)] + [(False, True, "missed_defect")] * 2 + [(False, True, None)] * 2)
HEATMAPS_ON = 3  # the live verdicts of the first three live-only frames carry a heatmap


def _verdict(frame_id: str, line: str, version: str, defective: bool, score: float, at_ns: int,
             heatmap_key: str | None = None) -> Verdict:
    return Verdict(frame_id=frame_id, line_id=line, camera_id="cam1", product="widget", seq=0, captured_at_ns=at_ns,
                   scored_at_ns=at_ns + 1000, model_name="widget", model_version=version, score=score,
                   threshold=1.0, is_defective=defective, heatmap_key=heatmap_key, queue_wait_ms=0.0,
                   inference_ms=1.0, processor_id="p1")


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (HEATMAP_PX, HEATMAP_PX, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_trial(state: Path) -> dict:
    """The rows and heatmaps of LINE's trial (and OTHER's live verdicts); what the panel must show."""
    now = time.time_ns()
    live, shadow, labels = [], [], []
    heatmaps = LocalFolderStore(state / "heatmaps")
    with_heatmap: set[str] = set()
    for i, (lv, sv, label) in enumerate(CASES):
        frame_id, at_ns = new_frame_id(), now - (len(CASES) - i) * 60 * 10**9
        key = None
        if lv and not sv and len(with_heatmap) < HEATMAPS_ON:
            key = topics.heatmap_key(LINE, frame_id, at_ns)
            heatmaps.put(key, _png(i), "image/png")
            with_heatmap.add(frame_id)
        live.append(_verdict(frame_id, LINE, "v1", lv, 1.5 if lv else 0.5 + i / 100, at_ns, key))
        shadow.append(_verdict(frame_id, LINE, "v2", sv, 1.25 if sv else 0.25 + i / 100, at_ns))
        if label:
            labels.append(Label(frame_id=frame_id, line_id=LINE, camera_id="cam1", product="widget",
                                model_version="v1", label=label, labelled_at_ns=now, operator="op"))
    others = [_verdict(new_frame_id(), OTHER, "v1", i % 3 == 0, 0.5, now - i * 10**9) for i in range(5)]
    store = ChdbStore(state / "chdb")
    try:
        store.create_schema()
        store.insert_verdicts(live + others)
        store.insert_shadow_verdicts(shadow)
        store.insert_labels(labels)
        [figures] = compare(store, LINE)
    finally:
        store.close()
    disagree = {l.frame_id: ("live" if l.is_defective else "shadow")
                for l, s in zip(live, shadow) if l.is_defective != s.is_defective}
    agree = sum(1 for lv, sv, _ in CASES if lv == sv)
    return {"agreement": agree / len(CASES), "disagree": disagree, "with_heatmap": with_heatmap, "figures": figures}


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("shadow-dashboard")
    state = root / "state"
    expected = _write_trial(state)
    (root / "models").mkdir()
    env = component_env(None, state, LINEGUARD_API__API_KEYS=json.dumps([KEY]),
                        LINEGUARD_PROCESSOR__MODEL_DIR=str(root / "models"))
    api = ApiServer(env, root / "serve.log")
    client = httpx.Client(base_url=api.url, timeout=60, headers={"X-API-Key": KEY})
    try:
        yield api, client, expected
    finally:
        client.close()
        api.stop()


def test_api_shadow_reports_the_compare_figures_and_the_disagreements(trial):
    api, client, expected = trial
    assert httpx.get(f"{api.url}/api/shadow", params={"line": LINE}).status_code == 401
    assert client.get("/api/shadow", params={"line": "../x"}).status_code == 422
    body = client.get("/api/shadow", params={"line": LINE}).json()
    [candidate] = body["candidates"]
    figures = expected["figures"]  # what `lineguard models compare` prints, from the same function
    assert candidate["agreement"] == pytest.approx(expected["agreement"]) == pytest.approx(figures["agreement"])
    for key in ("shadow_version", "live_versions", "frames", "both_pass", "both_defective", "live_only",
                "shadow_only", "labelled", "live_precision", "live_recall", "shadow_precision", "shadow_recall"):
        assert candidate[key] == figures[key], key
    assert candidate["live_score_quantiles"] == {f"p{round(q * 100)}": v
                                                 for q, v in figures["live_score_quantiles"].items()}
    assert (candidate["live_only"], candidate["shadow_only"], candidate["labelled"]) == (3, 4, 7)
    assert {d["frame_id"]: d["flagged_by"] for d in body["disagreements"]} == expected["disagree"]
    assert {d["frame_id"] for d in body["disagreements"] if d["heatmap_key"]} == expected["with_heatmap"]
    captured = [d["captured_at"] for d in body["disagreements"]]
    assert captured == sorted(captured, reverse=True)  # newest first
    assert len(client.get("/api/shadow", params={"line": LINE, "limit": 2}).json()["disagreements"]) == 2
    assert client.get("/api/shadow", params={"line": OTHER}).json() == {
        "line_id": OTHER, "candidates": [], "disagreements": []}


def test_dashboard_shows_the_shadow_trial(trial, browser):  # noqa: F811
    api, _, expected = trial
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{api.url}/dashboard#key={KEY}")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    assert page.locator("#shadow").is_visible()
    page.wait_for_function("[...document.querySelectorAll('img.shadow-heatmap')].every(i => i.complete && i.src)",
                           timeout=30_000)

    card = page.locator(f".trial[data-line='{LINE}'][data-shadow-version='v2']")
    assert page.locator(".trial").count() == 1  # OTHER has no trial: no card
    shown = card.locator(".agreement")
    assert float(shown.get_attribute("data-value")) == pytest.approx(expected["agreement"])
    assert shown.text_content() == f"{100 * expected['agreement']:.1f} %"
    counts = {k: int(card.locator(f".shadow-counts td.{k}").text_content())
              for k in ("both_pass", "both_defective", "live_only", "shadow_only")}
    figures = expected["figures"]
    assert counts == {k: figures[k] for k in counts}
    assert float(card.locator(".shadow-quantiles tr[data-side=shadow] td.p50").get_attribute("data-value")) == \
        pytest.approx(figures["shadow_score_quantiles"][0.5])
    for side in ("live", "shadow"):
        for metric in ("precision", "recall"):
            cell = card.locator(f".shadow-accuracy tr[data-side={side}] td.{metric}")
            assert float(cell.get_attribute("data-value")) == pytest.approx(figures[f"{side}_{metric}"])

    tiles = page.eval_on_selector_all(f".shadow-strip[data-line='{LINE}'] .shadow-tile",
                                      "ts => ts.map(t => [t.dataset.frame, t.dataset.flaggedBy, "
                                      "t.querySelector('.flagged').textContent])")
    assert len(tiles) == len(expected["disagree"]) == 7
    assert {frame: by for frame, by, _ in tiles} == expected["disagree"]
    assert all(text == ("flagged by live v1" if by == "live" else "flagged by shadow v2") for _, by, text in tiles)
    widths = page.eval_on_selector_all("img.shadow-heatmap", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [HEATMAP_PX] * HEATMAPS_ON
    assert page.locator(".shadow-tile .plain-tile").count() == len(tiles) - HEATMAPS_ON
    assert not errors, errors
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#shadow").screenshot(path=str(ARTIFACTS / "shadow-dashboard.png"))
    print(f"\nshadow panel: agreement {shown.text_content()}, {len(tiles)} disagreement tiles "
          f"({HEATMAPS_ON} with heatmaps); screenshot {ARTIFACTS / 'shadow-dashboard.png'}")
    page.close()
