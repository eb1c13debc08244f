"""The synchronous inspection API and the operator dashboard (FastAPI).

* ``POST /inspect/{product}``: an image upload (multipart field ``file``) scored now,
  with the same models, engine and thresholds as the stream processors.
* ``GET /models``, ``GET /health``, ``GET /metrics`` (Prometheus).
* ``GET /dashboard``: the operator page; its data comes from ``GET /api/...`` (ClickHouse)
  and ``GET /heatmaps/{key}`` (the heatmap object store).

Every endpoint that returns plant data needs the header ``X-API-Key``; ``/health``,
``/metrics`` and the dashboard's static page (which holds no data) do not. Errors
are JSON: ``{"error": "<code>", "detail": "<what went wrong>"}``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real Annotated[...]
# objects of the endpoints and dependencies defined inside create_app().
import datetime as dt
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Path as PathParam, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineguard.config import ConfigError, Settings
from lineguard.inspection import ModelLoadError, ModelRegistry

from .data import HeatmapReader, StoreHolder, Unavailable, rows_json
from .inspection import InspectionError, b64, decode_upload, inspect, limits_for
from .metrics import ApiMetrics

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
LINE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_.-]{1,128}){1,8}$"  # <line>/<yyyy>/<mm>/<dd>/<frame>.png
STATIC = resources.files("lineguard.api") / "static"


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. unauthorized, unknown_product, image_too_large")
    detail: str = Field(description="what went wrong, for people")


class InspectResult(BaseModel):
    product: str
    line_id: str | None = Field(description="the line whose model and threshold applied, if one was given")
    model_name: str
    model_version: str
    score: float
    threshold: float
    is_defective: bool = Field(description="score > threshold")
    latency_ms: float = Field(description="server time for this request: decode, score, heatmap")
    inference_ms: float
    width: int
    height: int
    heatmap_png_base64: str | None = Field(description="PNG overlay, with ?heatmap=true")


class ModelInfo(BaseModel):
    folder: str
    product: str
    line_id: str | None
    model_name: str
    model_version: str
    kind: str
    threshold: float
    input_width: int
    input_height: int
    providers: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    models: int
    clickhouse: str


class LineSummary(BaseModel):
    line_id: str
    model_name: str
    model_version: str
    last_frame_at: str
    frames: int
    defective: int
    defect_rate: float


class RatePoint(BaseModel):
    line_id: str
    period: str
    frames: int
    defective: int
    defect_rate: float


class DriftPoint(BaseModel):
    line_id: str
    period: str
    model_name: str
    model_version: str
    frames: int
    psi: float | None


class DefectItem(BaseModel):
    frame_id: str
    line_id: str
    camera_id: str
    product: str
    captured_at: str
    model_version: str
    score: float
    threshold: float
    heatmap_key: str | None


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed request body (e.g. broken multipart)", 401: "Missing or wrong X-API-Key", 404: "Not found",
            413: "Upload or image too large", 415: "Not a JPEG or PNG image", 422: "Invalid request or undecodable image",
            503: "ClickHouse, the object store or the product's model is unavailable"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, never buffering more than the limit.

    The declared Content-Length is checked first; a chunked body is counted as it
    streams in and cut off at the limit. Before answering, up to ``drain`` further
    bytes are read and dropped: a client still sending when the answer comes would
    otherwise see a reset connection instead of the 413. Beyond that the
    connection is simply closed.
    """

    def __init__(self, app, limit: int, drain: int = 32 * 1024 * 1024) -> None:  # noqa: ANN001 - ASGI app
        self.app, self.limit, self.drain = app, limit, drain

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= self.limit + self.drain:
                await self._discard(receive, self.limit + self.drain)
            await self._refuse(send)
            return
        seen = 0
        exceeded = started = refused = False

        async def limited_receive():  # noqa: ANN202
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True  # the app sees a client that went away and stops reading
                    if not message.get("more_body", False):
                        seen = -1  # the body has ended: nothing left to discard
                    return {"type": "http.disconnect"}
            return message

        async def refuse_once() -> None:
            nonlocal refused
            if not refused:
                refused = True
                if seen >= 0:
                    await self._discard(receive, self.drain)
                await self._refuse(send)

        async def guarded_send(message) -> None:  # noqa: ANN001
            nonlocal started
            if exceeded:  # whatever the app answers to the cut-off body, the client gets 413
                if not started:
                    await refuse_once()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await refuse_once()

    @staticmethod
    async def _discard(receive, budget: int) -> None:  # noqa: ANN001
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send) -> None:  # noqa: ANN001
        body = json.dumps({"error": "payload_too_large",
                           "detail": f"request body exceeds {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    """The app for ``settings``; models are loaded here (start-up) and reloaded when retrained, as in the processors."""
    keys = settings.api.keys()
    if not keys:
        raise ConfigError("no API keys configured: set api.api_keys (LINEGUARD_API__API_KEYS='[\"...\"]') "
                          "or api.api_keys_file")
    encoded_keys = [k.encode() for k in keys]
    model_dir = Path(settings.processor.model_dir)
    registry = registry or ModelRegistry.from_config(settings.processor)
    metrics = ApiMetrics()
    metrics.models_loaded.set(len(registry.load_all()))
    store = StoreHolder(settings, model_dir)
    heatmaps = HeatmapReader(settings)
    limits = limits_for(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        yield
        store.close()
        heatmaps.close()

    app = FastAPI(
        title="lineguard inspection API",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        responses=_responses(422),
    )
    app.state.registry, app.state.metrics, app.state.store = registry, metrics, store
    app.add_middleware(BodyLimit, limit=settings.api.max_upload_bytes + MULTIPART_OVERHEAD)
    app.mount("/dashboard/static", StaticFiles(directory=str(STATIC)), name="dashboard-static")

    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of api.api_keys")

    def require_key(api_key: Annotated[str | None, Security(header)]) -> None:
        given = (api_key or "").encode()
        # Compare against every key, always: the time taken says nothing about which matched.
        matched = False
        for candidate in encoded_keys:
            matched |= hmac.compare_digest(given, candidate)
        if not matched:
            raise StarletteHTTPException(401, "missing or wrong X-API-Key header")

    authed = [Depends(require_key)]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large"}
        headers = dict(exc.headers or {})  # e.g. Allow on 405
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "APIKey"
        return _error(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(InspectionError)
    async def _refused(_request: Request, exc: InspectionError) -> JSONResponse:
        metrics.rejections.labels(reason=exc.code).inc()
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(Unavailable)
    async def _unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return _error(503, "unavailable", str(exc), {"Retry-After": "5"})

    @app.middleware("http")
    async def _count(request: Request, call_next):  # noqa: ANN202
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
        metrics.request_seconds.labels(route=path).observe(time.perf_counter() - started)
        return response

    # -- inspection ------------------------------------------------------------------------

    @app.post("/inspect/{product}", response_model=InspectResult, dependencies=authed, tags=["inspection"],
              responses=_responses(400, 401, 404, 413, 415, 422, 503),
              summary="Score one image now and return the verdict")
    def inspect_image(
        product: Annotated[str, PathParam(pattern=NAME_PATTERN, description="product, as in the model folder")],
        file: Annotated[UploadFile, File(description="JPEG or PNG image")],
        heatmap: Annotated[bool, Query(description="include the heatmap overlay as base64 PNG")] = False,
        line: Annotated[str | None, Query(pattern=LINE_PATTERN,
                                          description="apply this line's model and threshold override")] = None,
    ) -> InspectResult:
        started = time.perf_counter()
        try:
            model = registry.get(product, line)
        except ModelLoadError as exc:
            raise InspectionError(503, "model_unavailable", str(exc)) from None
        if model is None:
            metrics.rejections.labels(reason="unknown_product").inc()
            raise StarletteHTTPException(404, f"no model for product {product!r}"
                                              + (f" on line {line!r}" if line else "")
                                              + f"; serving: {[m.folder for m in registry.loaded()] or 'none'}")
        data = file.file.read(limits.max_image_bytes + 1)  # never more than the limit + 1 byte
        img = decode_upload(data, limits)
        result = inspect(model, img, settings, line, heatmap)
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.inspections.labels(product=product, result="defective" if result.is_defective else "ok").inc()
        metrics.inspection_seconds.labels(product=product).observe(latency_ms / 1000)
        engine = model.engine
        return InspectResult(product=product, line_id=line, model_name=engine.name, model_version=engine.version,
                             score=result.score, threshold=result.threshold, is_defective=result.is_defective,
                             latency_ms=latency_ms, inference_ms=result.inference_ms, width=result.width,
                             height=result.height, heatmap_png_base64=b64(result.heatmap_png))

    @app.get("/models", response_model=list[ModelInfo], dependencies=authed, tags=["inspection"],
             responses=_responses(401))
    def list_models() -> list[ModelInfo]:
        out = []
        for m in registry.load_all():
            manifest = m.engine.manifest
            out.append(ModelInfo(folder=m.folder, product=m.product, line_id=m.line_id, model_name=manifest.name,
                                 model_version=manifest.version, kind=manifest.kind,
                                 threshold=manifest.thresholds.value, input_width=manifest.input.width,
                                 input_height=manifest.input.height, providers=list(m.engine.providers)))
        return out

    @app.get("/health", response_model=Health, tags=["operations"])
    def health() -> Health:
        return Health(status="ok", models=len(registry.loaded()), clickhouse=store.status())

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # -- dashboard data -------------------------------------------------------------------------

    def window(hours: int) -> dict[str, dt.datetime]:
        until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
        return {"since": until - dt.timedelta(hours=hours), "until": until}

    Hours = Annotated[int, Query(ge=1, le=24 * 366, description="how far back, in hours")]
    Grain = Annotated[Literal["hour", "day"], Query(description="bucket size")]

    def cookbook_rows(name: str, **params: Any) -> list[dict[str, Any]]:
        from lineguard.analytics import cookbook

        return rows_json(store.run(lambda s: cookbook.run(s, name, **params)))

    data_responses = _responses(401, 422, 503)

    @app.get("/api/lines", response_model=list[LineSummary], dependencies=authed, tags=["dashboard"],
             responses=data_responses, summary="Per line: model version in service, frames and defect rate")
    def lines(hours: Hours = 168) -> list[dict[str, Any]]:
        return cookbook_rows("line_models", **window(hours))

    @app.get("/api/defect-rate", response_model=list[RatePoint], dependencies=authed, tags=["dashboard"],
             responses=data_responses, summary="Defect rate per line over time")
    def defect_rate(hours: Hours = 168, grain: Grain = "day") -> list[dict[str, Any]]:
        return cookbook_rows("defect_rate_by_line", grain=grain, **window(hours))

    @app.get("/api/drift", response_model=list[DriftPoint], dependencies=authed, tags=["dashboard"],
             responses=data_responses, summary="Score drift (PSI vs calibration) per line over time")
    def drift(hours: Hours = 168, grain: Grain = "day") -> list[dict[str, Any]]:
        return cookbook_rows("drift_psi", grain=grain, **window(hours))

    @app.get("/api/defects/latest", response_model=list[DefectItem], dependencies=authed, tags=["dashboard"],
             responses=data_responses, summary="The latest defective frames, newest first")
    def latest_defects(hours: Hours = 168,
                       limit: Annotated[int, Query(ge=1, le=200)] = 12,
                       line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None) -> list[dict[str, Any]]:
        return cookbook_rows("latest_defects", limit=limit, line_id=line or "", **window(hours))

    @app.get("/heatmaps/{key:path}", dependencies=authed, tags=["dashboard"], response_class=Response,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the heatmap overlay"}, **_responses(401, 404, 503)},
             summary="A heatmap overlay from the object store (key as in Verdict.heatmap_key)")
    def heatmap_object(key: Annotated[str, PathParam(pattern=KEY_PATTERN, description="Verdict.heatmap_key")]
                       ) -> Response:
        try:
            data = heatmaps.read(key)
        except ValueError:  # check_key refused it ('..', foreign line): it cannot name a heatmap
            data = None
        if data is None:
            return _error(404, "not_found", f"no heatmap {key!r}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/dashboard", response_class=HTMLResponse, tags=["dashboard"],
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                              "description": "the operator dashboard page"}})
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    return app
