"""The shadow sink's writer: ``lineguard.shadow.<line>`` -> the ClickHouse ``shadow_verdicts`` table.

A shadow candidate's verdicts (``lineguard models shadow``) are Verdict messages like the live ones, on a
topic of their own; this writer puts them in a table of their own, so a shadow row never collapses with
the live row of the same frame. ``lineguard models compare`` joins the two.
"""

from __future__ import annotations

from lineguard.schemas import Verdict

from .clickhouse import StoreWriter


class ShadowWriter(StoreWriter[Verdict]):
    kind = "shadow"
    topic_kind = "shadow"
    message_type = Verdict
    insert = "insert_shadow_verdicts"
