"""The inspection core: model lookup with hot reload, thresholds, heatmap overlays. Used by the processors and the API alike."""

from .models import LoadedModel, ModelLoadError, ModelRegistry, valid_name
from .overlay import HEATMAP_MAX_SIDE, for_display, render_overlay
from .thresholds import NonFiniteScore, is_defective, threshold_for

__all__ = ["HEATMAP_MAX_SIDE", "LoadedModel", "ModelLoadError", "ModelRegistry", "NonFiniteScore", "for_display",
           "is_defective", "render_overlay", "threshold_for", "valid_name"]
