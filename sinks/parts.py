"""The part-verdict sink's writer: ``lineguard.parts.<line>`` -> the ClickHouse ``parts`` table.

Runs in the same :class:`~lineguard.sinks.runner.SinkRunner` as the verdict writer; replays of a
part collapse in the table (ReplacingMergeTree on ``decided_at_ns``, keyed by the part).
"""

from __future__ import annotations

from lineguard.schemas import PartVerdict

from .clickhouse import StoreWriter


class PartsWriter(StoreWriter[PartVerdict]):
    kind = "parts"
    topic_kind = "parts"
    message_type = PartVerdict
    insert = "insert_parts"
