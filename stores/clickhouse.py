"""The verdict store: one ``VerdictStore`` interface, two ClickHouse backends.

* :class:`ChdbStore` runs the ClickHouse engine embedded in this process (chdb),
  with its data under ``settings.chdb_path``. **Only one process may open a chdb
  path at a time** (ClickHouse locks ``<path>/status``), and one process can
  have only one chdb path open at a time; :class:`ChdbPathInUseError` says so
  plainly instead of chdb's terse "Error initializing EmbeddedServer".
* :class:`ServerStore` talks to a ClickHouse server over HTTP with
  clickhouse-connect.

Both create the same schema (:mod:`.verdict_schema`); reads that count go through
``verdicts_latest`` (one row per frame) or ``uniqExact(frame_id)``, never ``FINAL``. Both hand
UUID columns back as 32-hex strings, the form ``frame_id`` has everywhere else.
"""

from __future__ import annotations

import abc
import datetime as dt
import fcntl
import json
import re
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from lineguard.config import ConfigError, Settings
from lineguard.schemas import Label, PartVerdict, Verdict

from .verdict_schema import (LABEL_COLUMNS, MODEL_EVENT_COLUMNS, PART_COLUMNS, VERDICT_COLUMNS, check_identifier,
                             label_row, part_row, schema_statements, verdict_row)


def _utc(value: dt.datetime) -> dt.datetime:
    """Both backends hand out timezone-aware UTC datetimes."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class VerdictStore(abc.ABC):
    """Where verdicts live. Every method may raise on a transient failure; writers retry."""

    def __init__(self, database: str = "lineguard", *, ttl_days: int | None = None,
                 cluster: str | None = None) -> None:
        self.database = check_identifier(database)
        self.ttl_days = ttl_days  # None or 0: keep verdicts forever
        self.cluster = cluster    # None: one node; else the DDL's ON CLUSTER name

    @abc.abstractmethod
    def execute(self, sql: str) -> None:
        """Run a statement that returns no rows (DDL)."""

    @abc.abstractmethod
    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[list[Any]]) -> int:
        """Insert rows of plain Python values into ``table``; returns the rows sent."""

    def insert_verdicts(self, verdicts: Sequence[Verdict]) -> int:
        """Insert verdicts (replays welcome: they collapse); returns the rows sent."""
        return self.insert_rows("verdicts", VERDICT_COLUMNS, [verdict_row(v) for v in verdicts])

    def insert_shadow_verdicts(self, verdicts: Sequence[Verdict]) -> int:
        """Insert shadow candidates' verdicts into ``shadow_verdicts`` (never ``verdicts``); replays collapse."""
        return self.insert_rows("shadow_verdicts", VERDICT_COLUMNS, [verdict_row(v) for v in verdicts])

    def insert_model_event(self, **event: Any) -> int:
        """One promotion, rollback or shadow change (:data:`MODEL_EVENT_COLUMNS`; missing ones empty)."""
        row = [event.get(c) if c == "event_at_ns" else str(event.get(c) or "") for c in MODEL_EVENT_COLUMNS]
        return self.insert_rows("model_events", MODEL_EVENT_COLUMNS, [row])

    def insert_parts(self, parts: Sequence[PartVerdict]) -> int:
        """Insert part verdicts (a re-decided part collapses to its latest decision)."""
        return self.insert_rows("parts", PART_COLUMNS, [part_row(p) for p in parts])

    def insert_labels(self, labels: Sequence[Label]) -> int:
        """Insert operators' labels (a frame relabelled collapses to its latest label)."""
        return self.insert_rows("labels", LABEL_COLUMNS, [label_row(label) for label in labels])

    @abc.abstractmethod
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts. ``parameters`` binds ClickHouse ``{name:Type}`` placeholders."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def create_schema(self) -> None:
        """Create database, table and view if missing (safe to call on every start)."""
        for statement in schema_statements(self.database, ttl_days=self.ttl_days, cluster=self.cluster):
            self.execute(statement)

    def count_frames(self) -> int:
        """Distinct frames stored (replays counted once)."""
        rows = self.query(f"SELECT uniqExact(frame_id) AS frames FROM {self.database}.verdicts")
        return int(rows[0]["frames"])

    def __enter__(self) -> "VerdictStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ChdbPathInUseError(RuntimeError):
    """The chdb data directory is open elsewhere (another process, or another path in this one)."""


def _status_file_holder(path: Path) -> str | None:
    """If another process holds ClickHouse's lock on ``<path>/status``, describe it."""
    status = path / "status"
    if not status.exists():
        return None
    try:
        with status.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = status.read_text(errors="replace")
                pid = re.search(r"PID:\s*(\d+)", text)
                return f"process {pid.group(1)}" if pid else "another process"
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


_CH_TYPE_WRAPPERS = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")


def _from_json(value: Any, ch_type: str) -> Any:
    """Turn a JSONCompact value into the Python value clickhouse-connect would return."""
    if value is None:
        return None
    while (wrapped := _CH_TYPE_WRAPPERS.match(ch_type)) is not None:
        ch_type = wrapped.group(1)
    if ch_type.startswith(("Int", "UInt")):
        return int(value)  # 64-bit integers may arrive quoted
    if ch_type.startswith(("Float", "BFloat")):
        return float(value)  # also "nan"/"inf" strings
    if ch_type.startswith("Decimal"):
        return Decimal(str(value))
    if ch_type.startswith("DateTime"):
        zone = re.search(r"'([^']+)'", ch_type)
        tz = ZoneInfo(zone.group(1)) if zone else dt.timezone.utc
        return _utc(dt.datetime.fromisoformat(value).replace(tzinfo=tz))
    if ch_type.startswith("Date"):
        return dt.date.fromisoformat(value)
    if ch_type == "UUID":
        return uuid.UUID(value).hex
    return value


def _from_client(value: Any) -> Any:
    """clickhouse-connect's values in the chdb backend's forms (aware UTC, hex UUIDs)."""
    if isinstance(value, dt.datetime):
        return _utc(value)
    if isinstance(value, uuid.UUID):
        return value.hex
    return value


class ChdbStore(VerdictStore):
    """ClickHouse embedded in this process. One process per path; see the module docstring."""

    def __init__(self, path: str | Path, database: str = "lineguard", **schema: Any) -> None:
        super().__init__(database, **schema)
        from chdb import session as chdb_session  # heavy import, only when used

        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = chdb_session.Session(str(self.path))
        except Exception as exc:  # chdb raises RuntimeError with a terse text
            holder = _status_file_holder(self.path)
            if holder:
                raise ChdbPathInUseError(
                    f"chdb data directory {self.path} is already open by {holder}; only one process "
                    "may open a chdb path at a time (stop the other sink/demo, point "
                    "sinks.clickhouse.chdb_path elsewhere, or use the server backend)"
                ) from exc
            if "already initialized with path" in str(exc):
                raise ChdbPathInUseError(
                    f"this process already has another chdb path open ({exc}); chdb allows one "
                    "path per process -- close that store first"
                ) from exc
            raise
        # nan/inf come back as "nan"/"inf" (JSON has no such numbers) instead of null.
        self._session.query("SET output_format_json_quote_denormals = 1")

    def execute(self, sql: str) -> None:
        self._session.query(sql)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[list[Any]]) -> int:
        if not rows:
            return 0
        # Inline JSONEachRow: exact for floats (repr round-trips) and free of SQL quoting.
        lines = "\n".join(json.dumps(dict(zip(columns, row))) for row in rows)
        names = ", ".join(columns)
        self._session.query(f"INSERT INTO {self.database}.{check_identifier(table, 'table')} ({names}) "
                            f"FORMAT JSONEachRow\n{lines}")
        return len(rows)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in (parameters or {}).items()}
        result = self._session.query(sql, "JSONCompactEachRowWithNamesAndTypes", params=params)
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            return []  # a statement without a result set
        names, types = json.loads(lines[0]), json.loads(lines[1])
        rows = []
        for line in lines[2:]:
            values = json.loads(line)
            rows.append({n: _from_json(v, t) for n, v, t in zip(names, values, types)})
        return rows

    def close(self) -> None:
        session, self._session = getattr(self, "_session", None), None
        if session is not None:
            session.close()


class ServerStore(VerdictStore):
    """A ClickHouse server over HTTP(S) via clickhouse-connect."""

    def __init__(
        self,
        url: str,
        user: str = "default",
        password: str = "",
        database: str = "lineguard",
        *,
        compress: bool | str = True,
        connect_timeout_s: int = 10,
        send_receive_timeout_s: int = 120,
        **schema: Any,
    ) -> None:
        super().__init__(database, **schema)
        import clickhouse_connect  # heavy import, only when used

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"ClickHouse url {url!r} must look like http(s)://host:port")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or (8443 if parts.scheme == 'https' else 8123)}"
        # No database= here: create_schema() must work before the database exists,
        # so every statement names its table in full instead.
        self._client = clickhouse_connect.get_client(
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            interface=parts.scheme,
            username=user,
            password=password,
            compress=compress,
            connect_timeout=connect_timeout_s,
            send_receive_timeout=send_receive_timeout_s,
            autogenerate_session_id=False,  # no server session: the sink may use threads
        )

    def execute(self, sql: str) -> None:
        self._client.command(sql)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[list[Any]]) -> int:
        if not rows:
            return 0
        self._client.insert(table=table, database=self.database, data=list(rows), column_names=list(columns))
        return len(rows)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self._client.query(sql, parameters=parameters)
        rows = []
        for row in result.named_results():
            rows.append({k: _from_client(v) for k, v in row.items()})
        return rows

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()


def open_store(settings: Settings) -> VerdictStore:
    """The store the settings select (``sinks.clickhouse.backend``)."""
    cfg = settings.sinks.clickhouse
    schema = {"ttl_days": cfg.ttl_days, "cluster": cfg.cluster}
    if cfg.backend == "chdb":
        return ChdbStore(settings.chdb_path, cfg.database, **schema)
    return ServerStore(cfg.url, cfg.username, cfg.secret(), cfg.database, **schema)
