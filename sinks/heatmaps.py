"""The heatmap sink's writer: heatmap topics -> :class:`lineguard.stores.ObjectStore` (a folder or S3).

Each Heatmap message carries its object ``key``. Keys come from the wire, so each is
checked on decode (:func:`lineguard.stores.check_key`): an unsafe key, or one not under
the message's own line, goes to the dead-letter topic instead of the store, and so does an
object the store refuses for good (a PermanentWriteError: an invalid name, too large).
"""

from __future__ import annotations

from lineguard.config import Settings
from lineguard.schemas import Heatmap
from lineguard.stores import ObjectStore, check_key

from .errors import classified
from .writer import Writer


class HeatmapWriter(Writer[Heatmap]):
    """Heatmap topics -> object store, one object per heatmap."""

    kind = "heatmaps"
    topic_kind = "heatmaps"
    message_type = Heatmap

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        super().__init__(settings)
        self.store = store

    def decode(self, data: bytes) -> Heatmap:
        heatmap = super().decode(data)
        check_key(heatmap.key, heatmap.line_id)
        return heatmap

    def write(self, batch: list[Heatmap]) -> None:
        # A retry rewrites objects already stored in the failed attempt: same key, same bytes.
        for heatmap in batch:
            with classified(f"storing {heatmap.key}"):
                self.store.put(heatmap.key, heatmap.data, heatmap.content_type)
