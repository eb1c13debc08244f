"""Wire contracts shared by producers, processors and sinks: the only place they meet."""

from . import topics
from .errors import Reason, SchemaError
from .image import ImageLimits
from .messages import DeadLetter, Frame, Heatmap, Verdict, new_frame_id

__all__ = [
    "DeadLetter", "Frame", "Heatmap", "ImageLimits", "Reason", "SchemaError", "Verdict",
    "new_frame_id", "topics",
]
