"""Wire contracts shared by producers, processors and sinks: the only place they meet."""

from . import topics
from .errors import Reason, SchemaError
from .image import ImageLimits
from .messages import LABELS, DeadLetter, Frame, Heatmap, Label, PartVerdict, Verdict, new_frame_id, verdict_meta

__all__ = [
    "LABELS", "DeadLetter", "Frame", "Heatmap", "ImageLimits", "Label", "PartVerdict", "Reason", "SchemaError", "Verdict",
    "new_frame_id", "topics", "verdict_meta",
]
