"""The operator dashboard: its static page, its data (``GET /api/...``, from ClickHouse) and
the heatmap overlays it shows (``GET /heatmaps/{key}``, from the object store)."""

# No ``from __future__ import annotations``: FastAPI must see the real Annotated[...] objects
# of the endpoints defined inside dashboard_routes().
import datetime as dt
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path as PathParam, Query
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, Response

from .data import HeatmapReader, StoreHolder, rows_json
from .schema import (KEY_PATTERN, LINE_PATTERN, DefectItem, DriftPoint, LineSummary, RatePoint, documented_errors,
                     error_response)

STATIC = resources.files("lineguard.api") / "static"

Hours = Annotated[int, Query(ge=1, le=24 * 366, description="how far back, in hours")]
Grain = Annotated[Literal["hour", "day"], Query(description="bucket size")]


def window(hours: int) -> dict[str, dt.datetime]:
    """The last ``hours`` up to now (plus a second, so a row written this instant counts)."""
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    return {"since": until - dt.timedelta(hours=hours), "until": until}


def dashboard_routes(store: StoreHolder, heatmaps: HeatmapReader, authed: list[Depends]) -> APIRouter:
    """The dashboard's routes over ``store`` and ``heatmaps``; ``authed`` is the API-key dependency."""
    router = APIRouter()

    def cookbook_rows(name: str, **params: Any) -> list[dict[str, Any]]:
        from lineguard.analytics import cookbook

        return rows_json(store.run(lambda s: cookbook.run(s, name, **params)))

    data_responses = documented_errors(401, 422, 503)

    @router.get("/api/lines", response_model=list[LineSummary], dependencies=authed, tags=["dashboard"],
                responses=data_responses, summary="Per line: model version in service, frames and defect rate")
    def lines(hours: Hours = 168) -> list[dict[str, Any]]:
        return cookbook_rows("line_models", **window(hours))

    @router.get("/api/defect-rate", response_model=list[RatePoint], dependencies=authed, tags=["dashboard"],
                responses=data_responses, summary="Defect rate per line over time")
    def defect_rate(hours: Hours = 168, grain: Grain = "day") -> list[dict[str, Any]]:
        return cookbook_rows("defect_rate_by_line", grain=grain, **window(hours))

    @router.get("/api/drift", response_model=list[DriftPoint], dependencies=authed, tags=["dashboard"],
                responses=data_responses, summary="Score drift (PSI vs calibration) per line over time")
    def drift(hours: Hours = 168, grain: Grain = "day") -> list[dict[str, Any]]:
        return cookbook_rows("drift_psi", grain=grain, **window(hours))

    @router.get("/api/defects/latest", response_model=list[DefectItem], dependencies=authed, tags=["dashboard"],
                responses=data_responses, summary="The latest defective frames, newest first")
    def latest_defects(hours: Hours = 168,
                       limit: Annotated[int, Query(ge=1, le=200)] = 12,
                       line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None) -> list[dict[str, Any]]:
        return cookbook_rows("latest_defects", limit=limit, line_id=line or "", **window(hours))

    @router.get("/heatmaps/{key:path}", dependencies=authed, tags=["dashboard"], response_class=Response,
                responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                                 "description": "the heatmap overlay"}, **documented_errors(401, 404, 503)},
                summary="A heatmap overlay from the object store (key as in Verdict.heatmap_key)")
    def heatmap_object(key: Annotated[str, PathParam(pattern=KEY_PATTERN, description="Verdict.heatmap_key")]
                       ) -> Response:
        try:
            data = heatmaps.read(key)
        except ValueError:  # check_key refused it ('..', foreign line): it cannot name a heatmap
            data = None
        if data is None:
            return error_response(404, "not_found", f"no heatmap {key!r}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/dashboard", response_class=HTMLResponse, tags=["dashboard"],
                responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                                 "description": "the operator dashboard page"}})
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    return router
