"""The synchronous inspection API, as a real ``lineguard serve`` process: verdicts equal to the
ScoringEngine's, API keys, upload and pixel limits, clear 4xx errors, Prometheus metrics, and
schemathesis fuzzing the running server against its own OpenAPI schema.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
import httpx
import numpy as np
import pytest
from PIL import Image

from lineguard.components import component_env
from lineguard.engines.manifest import Manifest
from lineguard.engines.runtime import ScoringEngine
from lineguard.engines.training import train
from lineguard.producers.synthetic import SyntheticCamera
from lineguard.schemas import ImageLimits
from lineguard.schemas import image as imagecodec

from api_server import ApiServer

KEY = "test-key-env"
FILE_KEY = "test-key-from-file"
MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000
OVERRIDE = 0.5  # press1's threshold override for washers: far below any score


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    SyntheticCamera("washer", size=128, seed=1).write_mvtec(data, n_train=30, n_test_good=2, n_test_defect=2)
    models = root / "models"
    train("baseline", data, models / "washer", name="washer", version="api-1")
    # A line-specific model for press2: same graph, another version.
    (models / "washer@press2").mkdir()
    (models / "washer@press2" / "model.onnx").write_bytes((models / "washer" / "model.onnx").read_bytes())
    manifest = Manifest.load(models / "washer")
    manifest.version = "press2-1"
    manifest.save(models / "washer@press2")
    keys_file = root / "keys.txt"
    keys_file.write_text(f"# API keys, one per line\n{FILE_KEY}\n")
    heatmaps = root / "heatmaps"
    env = component_env(
        None, root / "state",
        LINEGUARD_API__API_KEYS=json.dumps([KEY]),
        LINEGUARD_API__API_KEYS_FILE=str(keys_file),
        LINEGUARD_API__MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        LINEGUARD_API__MAX_PIXELS=str(MAX_PIXELS),
        LINEGUARD_PROCESSOR__MODEL_DIR=str(models),
        LINEGUARD_PROCESSOR__THRESHOLD_OVERRIDES=json.dumps({"press1": {"washer": OVERRIDE}}),
        LINEGUARD_SINKS__OBJECT_STORE__LOCAL_DIR=str(heatmaps),
    )
    server = ApiServer(env, root / "serve.log")
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield {"url": server.url, "client": client, "models": models, "heatmaps": heatmaps, "server": server}
    finally:
        client.close()
        server.stop()


def _post(api, product: str, content: bytes, key: str | None = KEY, filename: str = "part.png",
          content_type: str = "image/png", **params) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    return api["client"].post(f"/inspect/{product}", params=params, headers=headers,
                              files={"file": (filename, content, content_type)})


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["detail"], body
    return body["detail"]


def test_verdicts_are_the_scoring_engines(api):
    camera = SyntheticCamera("washer", size=128, seed=1, defect_rate=0.0)
    engine = ScoringEngine(api["models"] / "washer")
    limits = ImageLimits()
    seen = set()
    for index, defect in ((9001, None), (9002, "scratch"), (9003, "chunk")):
        upload = _png(camera.render(index, defect=defect).image)
        r = _post(api, "washer", upload, heatmap="true")
        assert r.status_code == 200, r.text
        body = r.json()
        expected, _ = engine.score([imagecodec.decode("png", upload, limits)])
        assert body["score"] == pytest.approx(float(expected[0]), rel=1e-5)
        assert body["threshold"] == pytest.approx(engine.threshold)
        assert body["is_defective"] is (body["score"] > body["threshold"])
        assert (body["model_name"], body["model_version"], body["width"], body["height"]) == ("washer", "api-1", 128, 128)
        assert body["latency_ms"] >= body["inference_ms"] > 0
        heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
        assert heatmap.format == "PNG" and heatmap.size == (128, 128)
        seen.add(body["is_defective"])
        print(f"\ninspect washer #{index} ({defect or 'good'}): score {body['score']:.4f} "
              f"thr {body['threshold']:.4f} defective={body['is_defective']} latency {body['latency_ms']:.1f} ms")
    assert seen == {True, False}
    # JPEG too, and no heatmap unless asked for.
    jpeg, _, _ = imagecodec.encode(camera.render(9004).image, "jpeg")
    r = _post(api, "washer", jpeg, filename="part.jpg", content_type="image/jpeg")
    assert r.status_code == 200 and r.json()["heatmap_png_base64"] is None


def test_line_specific_model_and_threshold_override(api):
    upload = _png(SyntheticCamera("washer", size=128, seed=1).render(9010, defect=None).image)
    plain = _post(api, "washer", upload).json()
    press2 = _post(api, "washer", upload, line="press2").json()
    assert (press2["model_version"], press2["line_id"]) == ("press2-1", "press2")
    assert press2["score"] == pytest.approx(plain["score"], rel=1e-6)
    press1 = _post(api, "washer", upload, line="press1").json()  # shared model, overridden threshold
    assert (press1["model_version"], press1["threshold"], press1["is_defective"]) == ("api-1", OVERRIDE, True)
    assert plain["is_defective"] is False


@pytest.mark.parametrize("shape", [(1, 2048), (2048, 1)], ids=["2048x1", "1x2048"])
def test_thin_images_get_a_verdict_and_a_heatmap(api, shape):
    thin = np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)
    r = _post(api, "washer", _png(thin), heatmap="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (shape[1], shape[0])
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heatmap.size == ((512, 1) if shape[1] > shape[0] else (1, 512))  # shrunk, never to 0 pixels


def test_a_model_saved_while_serving_is_picked_up_without_a_restart(api):
    """The API shares the processors' registry: a new line-specific folder is served at the next poll."""
    models = api["models"]
    folder = models / "washer@press9"
    folder.mkdir()
    try:
        (folder / "model.onnx").write_bytes((models / "washer" / "model.onnx").read_bytes())
        manifest = Manifest.load(models / "washer")
        manifest.version = "press9-1"
        manifest.save(folder)  # the manifest last, as a trained model is saved
        upload = _png(SyntheticCamera("washer", size=128, seed=1).render(9011, defect=None).image)
        deadline = time.monotonic() + 10  # processor.model_poll_s is 2 s
        while (version := _post(api, "washer", upload, line="press9").json()["model_version"]) != "press9-1":
            assert time.monotonic() < deadline, f"still serving {version}"
            time.sleep(0.2)
        listed = api["client"].get("/models", headers={"X-API-Key": KEY}).json()
        assert ("washer@press9", "press9-1") in {(m["folder"], m["model_version"]) for m in listed}, listed
    finally:
        shutil.rmtree(folder)
    # Removed again: press9 falls back to the product-wide model.
    assert _post(api, "washer", upload, line="press9").json()["model_version"] == "api-1"


def test_api_keys_are_required(api):
    upload = _png(np.zeros((64, 64, 3), np.uint8))
    _error(_post(api, "washer", upload, key=None), 401, "unauthorized")
    _error(_post(api, "washer", upload, key="wrong-key"), 401, "unauthorized")
    assert _post(api, "washer", upload, key=FILE_KEY).status_code == 200  # the key from api_keys_file
    client = api["client"]
    _error(client.get("/models"), 401, "unauthorized")
    _error(client.get("/api/lines"), 401, "unauthorized")
    _error(client.get("/heatmaps/l1/2024/05/06/x.png"), 401, "unauthorized")
    # Open: health (for load balancers), metrics (for Prometheus), the data-less dashboard shell.
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/metrics").status_code == 200
    assert "lineguard" in client.get("/dashboard").text
    models = client.get("/models", headers={"X-API-Key": KEY}).json()
    assert {(m["folder"], m["model_version"]) for m in models} == {("washer", "api-1"), ("washer@press2", "press2-1")}


def test_uploads_over_the_size_or_pixel_limit_get_413(api):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    big = _png(noise)
    assert len(big) > MAX_UPLOAD + 64 * 1024  # refused from Content-Length, before it is read
    assert "exceeds" in _error(_post(api, "washer", big), 413, "payload_too_large")
    medium = big[: MAX_UPLOAD + 1000]  # inside the multipart allowance, over the file limit
    assert "exceeds" in _error(_post(api, "washer", medium), 413, "payload_too_large")
    # A decompression bomb: 25 megapixels in a few kilobytes; refused from its header.
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000
    assert "5000x5000" in _error(_post(api, "washer", buf.getvalue()), 413, "image_too_large")
    # A chunked upload (no Content-Length) over the limit is cut off too.
    def chunks():
        body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n" + big + b"\r\n--b--\r\n"
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]
    r = api["client"].post("/inspect/washer", content=chunks(),
                           headers={"X-API-Key": KEY, "Content-Type": "multipart/form-data; boundary=b"})
    _error(r, 413, "payload_too_large")


def test_non_images_get_415_and_broken_images_422(api):
    _error(_post(api, "washer", b"GIF89a" + bytes(100), filename="x.gif", content_type="image/gif"),
           415, "unsupported_media_type")
    _error(_post(api, "washer", b"just some text", filename="x.txt", content_type="text/plain"),
           415, "unsupported_media_type")
    good = _png(np.full((64, 64, 3), 90, np.uint8))
    assert "cannot decode" in _error(_post(api, "washer", good[: len(good) // 2]), 422, "invalid_image")
    _error(_post(api, "washer", b""), 422, "invalid_image")
    r = api["client"].post("/inspect/washer", headers={"X-API-Key": KEY}, data={"not_file": "x"})
    assert "file" in _error(r, 422, "invalid_request")
    broken = api["client"].post("/inspect/washer", content=b"--b\r\nno headers--b--\r\n",
                                headers={"X-API-Key": KEY, "Content-Type": "multipart/form-data; boundary=b"})
    _error(broken, 400, "bad_request")
    _error(_post(api, "bad product!", good), 422, "invalid_request")


def test_unknown_product_gets_404(api):
    detail = _error(_post(api, "gearwheel", _png(np.zeros((32, 32, 3), np.uint8))), 404, "not_found")
    assert "gearwheel" in detail and "washer" in detail


def test_heatmaps_are_served_from_the_object_store(api):
    png = _png(np.full((16, 16, 3), 200, np.uint8))
    key = "press1/2024/05/06/0123456789abcdef.png"
    (api["heatmaps"] / key).parent.mkdir(parents=True)
    (api["heatmaps"] / key).write_bytes(png)
    r = api["client"].get(f"/heatmaps/{key}", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png
    _error(api["client"].get("/heatmaps/press1/2024/05/06/missing.png", headers={"X-API-Key": KEY}), 404, "not_found")
    _error(api["client"].get("/heatmaps/press1/../../etc/passwd", headers={"X-API-Key": KEY}), 404, "not_found")


def _metrics(api) -> dict[str, float]:
    """{series (name{labels}): value} from the Prometheus text."""
    out = {}
    for line in api["client"].get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def test_metrics_count_what_happened(api):
    before = _metrics(api)
    camera = SyntheticCamera("washer", size=128, seed=1)
    _post(api, "washer", _png(camera.render(9020, defect=None).image))
    _post(api, "washer", _png(camera.render(9021, defect="crack").image))
    _post(api, "washer", _png(camera.render(9022, defect="stain").image), key=None)
    _post(api, "gearwheel", _png(camera.render(9023).image))
    _post(api, "washer", b"not an image")
    after = _metrics(api)

    def delta(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert delta('lineguard_api_inspections_total{product="washer",result="ok"}') == 1
    assert delta('lineguard_api_inspections_total{product="washer",result="defective"}') == 1
    assert delta('lineguard_api_rejected_total{reason="unknown_product"}') == 1
    assert delta('lineguard_api_rejected_total{reason="unsupported_media_type"}') == 1
    assert delta('lineguard_api_requests_total{method="POST",route="/inspect/{product}",status="401"}') == 1
    assert delta('lineguard_api_requests_total{method="POST",route="/inspect/{product}",status="200"}') == 2
    assert delta('lineguard_api_inspection_seconds_count{product="washer"}') == 2
    assert after["lineguard_api_models_loaded"] == 2
    print(f"\nmetrics: {len(after)} series; inspections ok/defective +1/+1, rejections counted by reason")


def test_schemathesis_finds_no_server_error_or_schema_violation(api, tmp_path):
    """Property-based requests against the running server, every check on (schemathesis CLI)."""
    config = tmp_path / "schemathesis.toml"
    # The upload is "binary" in the schema, which cannot say "a JPEG or PNG of at most N pixels":
    # for /inspect, 413/415/422 are the documented answers to schema-valid bytes that are no such image.
    config.write_text(
        '[parameters]\n"path.product" = "washer"\n\n'
        '[[operations]]\ninclude-name = "POST /inspect/{product}"\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", "413", "415", "422"]\n'
    )
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run", f"{api['url']}/openapi.json",
           "-H", f"X-API-Key: {KEY}", "--checks", "all", "--max-examples", "15",
           # one worker: hypothesis describes filters with ast.parse, which CPython 3.11 does not make
           # thread-safe ("AST constructor recursion depth mismatch" in 2 of 4 runs with two workers)
           "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all", "--seed", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = "\n".join(out.stdout.splitlines()[-25:])
    print("\n" + summary)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert re.search(r"(\d+) generated", out.stdout) and int(re.search(r"(\d+) generated", out.stdout).group(1)) > 100
    assert "Tested: 14" in out.stdout  # every operation of the schema was exercised
    # The server is still fine afterwards.
    assert api["client"].get("/health").json()["status"] == "ok"
    assert "Traceback" not in api["server"].output()
