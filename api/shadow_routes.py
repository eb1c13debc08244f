"""The dashboard's shadow-trial view (``GET /api/shadow``): per candidate version on a line the figures of
``lineguard models compare`` and the latest frames where the live model and a candidate disagree.

Both come from :mod:`lineguard.analytics.shadow` (the same queries as the CLI, never a second copy).
"""

# No ``from __future__ import annotations``: FastAPI must see the real Annotated[...] objects
# of the endpoints defined inside shadow_routes().
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.params import Depends
from pydantic import BaseModel, Field

from .dashboard_routes import Hours, window
from .data import StoreHolder
from .schema import LINE_PATTERN, documented_errors


class ShadowCandidate(BaseModel):
    shadow_version: str
    live_versions: list[str] = Field(description="the live versions that scored the same frames")
    frames: int = Field(description="frames scored by both (joined on frame_id)")
    both_pass: int
    both_defective: int
    live_only: int = Field(description="defective for the live model only")
    shadow_only: int = Field(description="defective for the candidate only")
    agreement: float | None = Field(description="(both_pass + both_defective) / frames")
    live_score_quantiles: dict[str, float] = Field(description="p50, p90, p99 of the live scores")
    shadow_score_quantiles: dict[str, float] = Field(description="p50, p90, p99 of the candidate's scores")
    labelled: int = Field(description="frames operators labelled; precision and recall count only these")
    live_precision: float | None
    live_recall: float | None
    shadow_precision: float | None
    shadow_recall: float | None


class ShadowDisagreement(BaseModel):
    frame_id: str
    camera_id: str
    captured_at: str = Field(description="ISO 8601 UTC")
    flagged_by: Literal["live", "shadow"] = Field(description="which model judged the frame defective")
    live_version: str
    live_score: float
    live_threshold: float
    live_defective: bool
    shadow_version: str
    shadow_score: float
    shadow_threshold: float
    shadow_defective: bool
    heatmap_key: str | None = Field(description="the live verdict's overlay, for GET /heatmaps/{key}")


class ShadowReport(BaseModel):
    line_id: str
    candidates: list[ShadowCandidate] = Field(description="one per candidate version; empty: no trial")
    disagreements: list[ShadowDisagreement] = Field(description="the latest disagreements, newest first")


def _quantiles(by_q: dict[float, float]) -> dict[str, float]:
    return {f"p{round(q * 100)}": value for q, value in by_q.items()}


def _candidate(result: dict[str, Any]) -> ShadowCandidate:
    return ShadowCandidate(**{**result,
                              "live_score_quantiles": _quantiles(result["live_score_quantiles"]),
                              "shadow_score_quantiles": _quantiles(result["shadow_score_quantiles"])})


def _disagreement(row: dict[str, Any]) -> ShadowDisagreement:
    captured = dt.datetime.fromtimestamp(int(row["captured_at_ns"]) / 1e9, dt.timezone.utc)
    return ShadowDisagreement(
        frame_id=str(row["frame_id"]).replace("-", ""),  # 32 hex, as Verdict.frame_id and the label route
        camera_id=row["camera_id"],
        captured_at=captured.isoformat().replace("+00:00", "Z"),
        flagged_by="live" if row["live_defective"] else "shadow",
        live_version=row["live_version"], live_score=row["live_score"], live_threshold=row["live_threshold"],
        live_defective=bool(row["live_defective"]),
        shadow_version=row["shadow_version"], shadow_score=row["shadow_score"],
        shadow_threshold=row["shadow_threshold"], shadow_defective=bool(row["shadow_defective"]),
        heatmap_key=row["heatmap_key"] or None)


def shadow_routes(store: StoreHolder, authed: list[Depends]) -> APIRouter:
    router = APIRouter()

    @router.get("/api/shadow", response_model=ShadowReport, dependencies=authed, tags=["dashboard"],
                responses=documented_errors(401, 422, 503),
                summary="A line's shadow trial: agreement with the live model per candidate, latest disagreements")
    def shadow_trial(line: Annotated[str, Query(pattern=LINE_PATTERN, description="the line")],
                     hours: Hours = 168,
                     limit: Annotated[int, Query(ge=1, le=100, description="how many disagreements")] = 24,
                     ) -> ShadowReport:
        from lineguard.analytics import shadow

        since_ns = int(window(hours)["since"].timestamp() * 1e9)
        results, rows = store.run(lambda s: (shadow.compare(s, line, since_ns),
                                             shadow.disagreements(s, line, since_ns, limit)))
        return ShadowReport(line_id=line, candidates=[_candidate(r) for r in results],
                            disagreements=[_disagreement(r) for r in rows])

    return router
