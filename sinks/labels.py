"""The label sink's writer: ``lineguard.labels.<line>`` -> the ClickHouse ``labels`` table.

Runs in the same :class:`~lineguard.sinks.runner.SinkRunner` as the verdict writer. A frame labelled
twice (an operator changing their mind, or a replay) collapses to its latest label in the table
(ReplacingMergeTree on ``labelled_at_ns``, keyed by the frame).
"""

from __future__ import annotations

from lineguard.schemas import Label

from .clickhouse import StoreWriter


class LabelsWriter(StoreWriter[Label]):
    kind = "labels"
    topic_kind = "labels"
    message_type = Label
    insert = "insert_labels"
