"""What the API accepts and answers: path and query patterns, the JSON bodies, and the error shape."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
LINE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_.-]{1,128}){1,8}$"  # <line>/<yyyy>/<mm>/<dd>/<frame>.png


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


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def documented_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses, each with the ErrorBody shape."""
    text = {400: "Malformed request body (e.g. broken multipart)", 401: "Missing or wrong X-API-Key", 404: "Not found",
            413: "Upload or image too large", 415: "Not a JPEG or PNG image", 422: "Invalid request or undecodable image",
            503: "ClickHouse, the object store or the product's model is unavailable"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}
