"""Operator feedback: label a verdict (``POST /verdicts/{frame_id}/label``), review a sample of passed
parts (``GET /review/passed``) and read precision and recall from the labels (``GET /api/feedback``).

A label is published to ``lineguard.labels.<line>`` (:mod:`.labels`); ``lineguard sink labels`` writes it
to ClickHouse, where the cookbook's ``feedback_by_*`` queries set it against the frame's latest verdict.
Who labelled: the ``X-Operator`` header (a name the client gives: the dashboard asks the operator for
it), else the id of the API key used. The header is trusted as far as the key is: anyone holding a
key may label, and the log records the key's id with every label.
"""

# No ``from __future__ import annotations``: FastAPI must see the real Annotated[...] objects
# of the endpoints defined inside feedback_routes().
import datetime as dt
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path as PathParam, Query, Request
from fastapi.params import Depends
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineguard.schemas import Label
from lineguard.schemas.messages import LABEL_NOTE_CHARS

from .dashboard_routes import Hours, window
from .data import StoreHolder, rows_json
from .labels import LabelPublisher, key_id
from .schema import LINE_PATTERN, ErrorBody, documented_errors, error_response

FRAME_PATTERN = r"^[0-9a-f]{32}$"
OPERATOR_PATTERN = r"^[A-Za-z0-9 ._@-]{1,64}$"
# Which labels fit which verdict: an operator confirms or refutes a defect the model flagged, and
# marks a missed defect only on a part the model passed.
FITS = {"confirmed_defect": True, "false_alarm": True, "missed_defect": False}


class LabelRequest(BaseModel):
    label: Literal["confirmed_defect", "false_alarm", "missed_defect"] = Field(
        description="confirmed_defect / false_alarm on a defective verdict, missed_defect on a passed one")
    note: str | None = Field(default=None, max_length=LABEL_NOTE_CHARS, description="free text for the record")


class LabelAccepted(BaseModel):
    frame_id: str
    line_id: str
    camera_id: str
    model_version: str
    label: str
    operator: str
    labelled_at: str = Field(description="ISO 8601 UTC; the latest label of a frame is the one that counts")
    topic: str = Field(description="where it was published; lineguard sink labels writes it to ClickHouse")


class PassedItem(BaseModel):
    frame_id: str
    line_id: str
    camera_id: str
    product: str
    captured_at: str
    model_version: str
    score: float
    threshold: float
    label: str = Field(description="the frame's latest label, '' if none")


class FeedbackRow(BaseModel):
    line_id: str
    camera_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    labelled: int
    confirmed: int = Field(description="labelled defective, verdict defective")
    false_alarms: int = Field(description="labelled good (false_alarm), verdict defective")
    missed: int = Field(description="labelled defective (missed_defect), verdict passed")
    precision: float | None = Field(description="confirmed / (confirmed + false_alarms); null without labels")
    recall: float | None = Field(description="confirmed / (confirmed + missed), from the sampled passed parts")


_VERDICT_SQL = """
SELECT frame_id, line_id, camera_id, product, model_version, is_defective
FROM {db}.verdicts_latest
WHERE frame_id = toUUID({frame_id:String})
"""


def feedback_routes(store: StoreHolder, publisher: LabelPublisher, authed: list[Depends]) -> APIRouter:
    router = APIRouter()

    def cookbook_rows(name: str, **params: Any) -> list[dict[str, Any]]:
        from lineguard.analytics import cookbook

        return rows_json(store.run(lambda s: cookbook.run(s, name, **params)))

    @router.post("/verdicts/{frame_id}/label", response_model=LabelAccepted, status_code=202, dependencies=authed,
                 tags=["feedback"], summary="Label a verdict: confirmed defect, false alarm or missed defect",
                 responses={**documented_errors(400, 401, 404, 422, 503),
                            409: {"model": ErrorBody, "description": "The label does not fit the verdict"}})
    def label_verdict(
        request: Request,
        frame_id: Annotated[str, PathParam(pattern=FRAME_PATTERN, description="Verdict.frame_id (32 hex)")],
        body: Annotated[LabelRequest, Body()],
        operator: Annotated[str | None, Header(alias="X-Operator", pattern=OPERATOR_PATTERN,
                                               description="who labels (default: the API key's id)")] = None,
    ) -> LabelAccepted:
        rows = store.run(lambda s: s.query(_VERDICT_SQL.replace("{db}", s.database), {"frame_id": frame_id}))
        if not rows:
            raise StarletteHTTPException(404, f"no verdict for frame {frame_id!r}")
        verdict = rows[0]
        if FITS[body.label] != bool(verdict["is_defective"]):
            kind = "defective" if verdict["is_defective"] else "passed"
            return error_response(409, "label_mismatch", f"{body.label} does not fit a {kind} verdict: "
                                  "confirmed_defect and false_alarm judge defective verdicts, missed_defect passed ones")
        api_key = key_id(request.headers.get("X-API-Key", ""))
        labelled_at_ns = time.time_ns()
        label = Label(frame_id=frame_id, line_id=verdict["line_id"], camera_id=verdict["camera_id"],
                      product=verdict["product"], model_version=verdict["model_version"], label=body.label,
                      labelled_at_ns=labelled_at_ns, operator=(operator or "").strip() or api_key, note=body.note)
        topic = publisher.publish(label, api_key)
        at = dt.datetime.fromtimestamp(labelled_at_ns / 1e9, dt.timezone.utc)
        return LabelAccepted(frame_id=frame_id, line_id=label.line_id, camera_id=label.camera_id,
                             model_version=label.model_version, label=label.label, operator=label.operator,
                             labelled_at=at.isoformat().replace("+00:00", "Z"), topic=topic)

    data_responses = documented_errors(401, 422, 503)

    @router.get("/review/passed", response_model=list[PassedItem], dependencies=authed, tags=["feedback"],
                responses=data_responses,
                summary="A sample of recent passed frames for operators to review (mark missed defects)")
    def passed_sample(line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None,
                      n: Annotated[int, Query(ge=1, le=100, description="how many frames")] = 12,
                      hours: Hours = 24) -> list[dict[str, Any]]:
        return cookbook_rows("passed_sample", line_id=line or "", limit=n, **window(hours))

    @router.get("/api/feedback", response_model=list[FeedbackRow], dependencies=authed, tags=["feedback"],
                responses=data_responses,
                summary="Precision and recall from operator labels, per line (or camera, or model version)")
    def feedback(by: Annotated[Literal["line", "camera", "model_version"], Query()] = "line",
                 hours: Hours = 168,
                 line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None) -> list[dict[str, Any]]:
        return cookbook_rows(f"feedback_by_{by}", line_id=line or "", **window(hours))

    return router
