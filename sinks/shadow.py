"""The shadow sink's writer: ``lineguard.shadow.<line>`` -> the ClickHouse ``shadow_verdicts`` table.

A shadow candidate's verdicts (``lineguard models shadow``) are Verdict messages like the live ones, on a
topic of their own; this writer puts them in a table of their own, so a shadow row never collapses with
the live row of the same frame. ``lineguard models compare`` joins the two.
"""

from __future__ import annotations

from lineguard.config import Settings
from lineguard.schemas import Verdict
from lineguard.stores import VerdictStore

from .errors import classified
from .writer import Writer


class ShadowWriter(Writer[Verdict]):
    kind = "shadow"
    topic_kind = "shadow"
    message_type = Verdict

    def __init__(self, settings: Settings, store: VerdictStore) -> None:
        super().__init__(settings)
        self.store = store
        self.store.create_schema()

    def write(self, batch: list[Verdict]) -> None:
        with classified("ClickHouse insert"):
            self.store.insert_shadow_verdicts(batch)
