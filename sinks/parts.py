"""The part-verdict sink's writer: ``lineguard.parts.<line>`` -> the ClickHouse ``parts`` table.

Runs in the same :class:`~lineguard.sinks.runner.SinkRunner` as the verdict writer; replays of a
part collapse in the table (ReplacingMergeTree on ``decided_at_ns``, keyed by the part).
"""

from __future__ import annotations

from lineguard.config import Settings
from lineguard.schemas import PartVerdict
from lineguard.stores import VerdictStore

from .errors import classified
from .writer import Writer


class PartsWriter(Writer[PartVerdict]):
    kind = "parts"
    topic_kind = "parts"
    message_type = PartVerdict

    def __init__(self, settings: Settings, store: VerdictStore) -> None:
        super().__init__(settings)
        self.store = store
        self.store.create_schema()

    def write(self, batch: list[PartVerdict]) -> None:
        with classified("ClickHouse insert"):
            self.store.insert_parts(batch)
