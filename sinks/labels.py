"""The label sink's writer: ``lineguard.labels.<line>`` -> the ClickHouse ``labels`` table.

Runs in the same :class:`~lineguard.sinks.runner.SinkRunner` as the verdict writer. A frame labelled
twice (an operator changing their mind, or a replay) collapses to its latest label in the table
(ReplacingMergeTree on ``labelled_at_ns``, keyed by the frame).
"""

from __future__ import annotations

from lineguard.config import Settings
from lineguard.schemas import Label
from lineguard.stores import VerdictStore

from .errors import classified
from .writer import Writer


class LabelsWriter(Writer[Label]):
    kind = "labels"
    topic_kind = "labels"
    message_type = Label

    def __init__(self, settings: Settings, store: VerdictStore) -> None:
        super().__init__(settings)
        self.store = store
        self.store.create_schema()

    def write(self, batch: list[Label]) -> None:
        with classified("ClickHouse insert"):
            self.store.insert_labels(batch)
