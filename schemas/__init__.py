"""Wire contracts shared by producers, processors and sinks: the only place they meet."""

from . import topics
from .errors import Reason, SchemaError
from .image import ImageLimits
from .messages import DeadLetter, Frame, Heatmap, PartVerdict, Verdict, new_frame_id, verdict_meta

__all__ = [
    "DeadLetter", "Frame", "Heatmap", "ImageLimits", "PartVerdict", "Reason", "SchemaError", "Verdict",
    "new_frame_id", "topics", "verdict_meta",
]
