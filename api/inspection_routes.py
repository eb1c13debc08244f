"""The inspection endpoints: ``POST /inspect/{product}`` (score one upload now) and ``GET /models``."""

# No ``from __future__ import annotations``: FastAPI must see the real Annotated[...] objects
# of the endpoints defined inside inspection_routes().
import time
from typing import Annotated

from fastapi import APIRouter, File, Path as PathParam, Query, UploadFile
from fastapi.params import Depends
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineguard.config import Settings
from lineguard.inspection import ModelLoadError, ModelRegistry

from .inspection import InspectionError, b64, decode_upload, inspect, limits_for
from .metrics import ApiMetrics
from .schema import LINE_PATTERN, NAME_PATTERN, InspectResult, ModelInfo, documented_errors


def inspection_routes(settings: Settings, registry: ModelRegistry, metrics: ApiMetrics,
                      authed: list[Depends]) -> APIRouter:
    """The routes scoring with ``registry``'s models; ``authed`` is the API-key dependency."""
    limits = limits_for(settings)
    router = APIRouter()

    @router.post("/inspect/{product}", response_model=InspectResult, dependencies=authed, tags=["inspection"],
                 responses=documented_errors(400, 401, 404, 413, 415, 422, 503),
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

    @router.get("/models", response_model=list[ModelInfo], dependencies=authed, tags=["inspection"],
                responses=documented_errors(401))
    def list_models() -> list[ModelInfo]:
        out = []
        for m in registry.load_all():
            manifest = m.engine.manifest
            out.append(ModelInfo(folder=m.folder, product=m.product, line_id=m.line_id, model_name=manifest.name,
                                 model_version=manifest.version, kind=manifest.kind,
                                 threshold=manifest.thresholds.value, input_width=manifest.input.width,
                                 input_height=manifest.input.height, providers=list(m.engine.providers)))
        return out

    return router
