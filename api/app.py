"""The synchronous inspection API and the operator dashboard (FastAPI).

* ``POST /inspect/{product}``: an image upload (multipart field ``file``) scored now,
  with the same models, engine and thresholds as the stream processors.
* ``GET /models``, ``GET /health``, ``GET /metrics`` (Prometheus).
* ``GET /dashboard``: the operator page; its data comes from ``GET /api/...`` (ClickHouse)
  and ``GET /heatmaps/{key}`` (the heatmap object store).
* ``POST /verdicts/{frame_id}/label``, ``GET /review/passed``, ``GET /api/feedback``: operator feedback
  (labels go to Kafka, never straight to ClickHouse; see feedback_routes).
* ``GET /api/shadow``: a line's shadow trial, as ``lineguard models compare`` shows it, with the latest
  disagreements (see shadow_routes).

Every endpoint that returns plant data needs the header ``X-API-Key``; ``/health``,
``/metrics`` and the dashboard's static page (which holds no data) do not. Errors
are JSON: ``{"error": "<code>", "detail": "<what went wrong>"}``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real Annotated[...]
# objects of the endpoints and dependencies defined inside create_app().
import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineguard.config import ConfigError, Settings
from lineguard.inspection import ModelRegistry

from .body_limit import BodyLimit
from .dashboard_routes import STATIC, dashboard_routes
from .data import HeatmapReader, StoreHolder, Unavailable
from .drift_metrics import DriftCollector
from .feedback_routes import feedback_routes
from .inspection import InspectionError
from .inspection_routes import inspection_routes
from .labels import LabelPublisher
from .metrics import ApiMetrics
from .schema import Health, documented_errors, error_response
from .shadow_routes import shadow_routes

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    """The app for ``settings``; models are loaded here (start-up) and reloaded when retrained, as in the processors."""
    keys = settings.api.keys()
    if not keys:
        raise ConfigError("no API keys configured: set api.api_keys (LINEGUARD_API__API_KEYS='[\"...\"]') "
                          "or api.api_keys_file")
    encoded_keys = [k.encode() for k in keys]
    model_dir = Path(settings.processor.model_dir)
    registry = registry or ModelRegistry.from_settings(settings)
    metrics = ApiMetrics()
    metrics.models_loaded.set(len(registry.load_all()))
    store = StoreHolder(settings, model_dir)
    metrics.registry.register(DriftCollector(store))  # lineguard_score_drift_psi, for the drift alert
    heatmaps = HeatmapReader(settings)
    labels = LabelPublisher(settings)  # operators' labels -> lineguard.labels.<line>

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        yield
        store.close()
        heatmaps.close()
        labels.close()

    app = FastAPI(
        title="lineguard inspection API",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        responses=documented_errors(422),
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
        return error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(InspectionError)
    async def _refused(_request: Request, exc: InspectionError) -> JSONResponse:
        metrics.rejections.labels(reason=exc.code).inc()
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(Unavailable)
    async def _unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), {"Retry-After": "5"})

    @app.middleware("http")
    async def _count(request: Request, call_next):  # noqa: ANN202
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
        metrics.request_seconds.labels(route=path).observe(time.perf_counter() - started)
        return response

    app.include_router(inspection_routes(settings, registry, metrics, authed))

    @app.get("/health", response_model=Health, tags=["operations"])
    def health() -> Health:
        return Health(status="ok", models=len(registry.loaded()), clickhouse=store.status())

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(dashboard_routes(store, heatmaps, authed))
    app.include_router(feedback_routes(store, labels, authed))
    app.include_router(shadow_routes(store, authed))
    return app
