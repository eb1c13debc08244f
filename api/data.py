"""The API's read side: ClickHouse for the dashboard's figures, the object store for heatmaps.

ClickHouse and chdb: with the server backend (``sinks.clickhouse.backend: server``,
what a plant runs) the API is one more ClickHouse client beside the sinks. With the
embedded chdb backend only one process may open the data directory, so the API can
serve the dashboard only while no sink holds it (after a demo, a batch import, a
copied directory). The API therefore opens the store lazily and, when it cannot
(``ChdbPathInUseError``, a server that is down), answers the data endpoints with
503 and a message that says why -- inspection keeps working -- and tries again on
the next request, at most every ``retry_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lineguard.config import Settings
from lineguard.stores import ObjectStore, VerdictStore, check_key, open_object_store, open_store

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unavailable(Exception):
    """A backing store cannot be reached; the message is safe to show (no secrets)."""


class StoreHolder:
    """One VerdictStore for the process, opened on first use, queries serialised."""

    def __init__(self, settings: Settings, model_dir: Path | None, retry_s: float = 5.0) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.retry_s = retry_s
        self._store: VerdictStore | None = None
        self._lock = threading.Lock()
        self._failed_at = 0.0
        self._error = ""

    @property
    def opened(self) -> bool:
        """Whether the store is open now (the drift metrics never open an embedded chdb store themselves)."""
        return self._store is not None

    def status(self) -> str:
        if self._store is not None:
            return "ok"
        return f"unavailable: {self._error}" if self._error else "not opened"

    def _open(self) -> VerdictStore:
        from lineguard.analytics.schema import create_analytics_schema, load_model_references

        store = open_store(self.settings)
        try:
            create_analytics_schema(store)
            if self.model_dir is not None:
                load_model_references(store, self.model_dir)  # the drift reference of the served models
        except Exception:
            store.close()
            raise
        return store

    def run(self, fn: Callable[[VerdictStore], T]) -> T:
        with self._lock:
            if self._store is None:
                if time.monotonic() - self._failed_at < self.retry_s and self._error:
                    raise Unavailable(self._error)
                try:
                    self._store = self._open()
                    self._error = ""
                except Exception as exc:  # noqa: BLE001 - reported to the client as 503
                    self._failed_at = time.monotonic()
                    self._error = f"ClickHouse ({self.settings.sinks.clickhouse.backend}) cannot be opened: {exc}"
                    log.warning("%s", self._error)
                    raise Unavailable(self._error) from None
            try:
                return fn(self._store)
            except Exception as exc:
                if self.settings.sinks.clickhouse.backend == "server" and _is_connection_error(exc):
                    self._close_locked()  # reconnect next time
                    raise Unavailable(f"ClickHouse server unreachable: {exc}") from None
                raise

    def _close_locked(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def close(self) -> None:
        with self._lock:
            self._close_locked()


def _is_connection_error(exc: Exception) -> bool:
    name = type(exc).__name__
    return "Connection" in name or "OperationalError" in name or isinstance(exc, OSError)


class HeatmapReader:
    """Reads heatmap PNGs back from the store the heatmap sink writes to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()

    def _get_store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_object_store(self.settings)
                except Exception as exc:  # noqa: BLE001
                    raise Unavailable(f"object store ({self.settings.sinks.object_store.backend}) "
                                      f"cannot be opened: {type(exc).__name__}") from None
            return self._store

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such object. Raises ValueError on an unsafe key."""
        line = key.split("/", 1)[0]
        check_key(key, line)  # SchemaError (a ValueError) for anything that is not <line>/.../<name>
        store = self._get_store()
        try:
            return store.get(key)
        except ValueError:
            raise
        except Exception as exc:  # the store is down or refuses: the caller answers 503
            raise Unavailable(f"object store error: {type(exc).__name__}") from None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def rows_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ClickHouse rows -> JSON-friendly dicts (datetimes as ISO 8601 UTC, NaN as null)."""
    import datetime as dt
    import math

    out = []
    for row in rows:
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, dt.datetime):
                value = value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
            elif isinstance(value, dt.date):
                value = value.isoformat()
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            clean[key] = value
        out.append(clean)
    return out
