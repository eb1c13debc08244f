"""The ClickHouse sink's writer: verdict topics -> :class:`lineguard.stores.VerdictStore`.

The schema, the chdb and server backends and the replay rules live in ``lineguard.stores``;
this writer only decodes verdicts and inserts each batch (run by :mod:`.runner`). An insert
ClickHouse refuses for good (a type or constraint error) is a PermanentWriteError.
"""

from __future__ import annotations

from typing import ClassVar

from lineguard.config import Settings
from lineguard.schemas import Verdict
from lineguard.stores import VerdictStore

from .errors import classified
from .writer import T, Writer


class StoreWriter(Writer[T]):
    """One kind of message into its ClickHouse table, one insert per batch: subclasses name the topics,
    the message and the :class:`VerdictStore` method that inserts a batch."""

    insert: ClassVar[str]

    def __init__(self, settings: Settings, store: VerdictStore) -> None:
        super().__init__(settings)
        self.store = store
        self.store.create_schema()

    def write(self, batch: list[T]) -> None:
        with classified("ClickHouse insert"):
            getattr(self.store, self.insert)(batch)


class ClickHouseWriter(StoreWriter[Verdict]):
    """Verdict topics -> ClickHouse, one insert per batch."""

    kind = "clickhouse"
    topic_kind = "verdicts"
    message_type = Verdict
    insert = "insert_verdicts"
