"""``lineguard_score_drift_psi{line, product}`` on the API's ``/metrics``: score drift for Prometheus to alert on.

The figures are the dashboard's: the ``score_drift_hourly`` view (PSI of the scores of frames judged normal
against the model's calibration histogram, :mod:`lineguard.analytics.schema`), read through the API's
:class:`~lineguard.api.data.StoreHolder`. Per line and product the gauge holds the newest hour (the current
one or the one before) with at least ``min_frames`` normal frames, so the value does not drop to a noisy
few-frame figure at each hour's start; a line without enough frames has no series. Scrapes are cheap: the
query runs at most every ``cache_s`` seconds, and a failed query keeps the last figures (their age is in
``lineguard_score_drift_updated_timestamp_seconds``).

With the embedded chdb backend only one process may open the store, so a scrape never opens it: the
figures come once the dashboard has opened it (a plant runs the ClickHouse server backend, always queried).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .data import StoreHolder

log = logging.getLogger(__name__)

CACHE_S = 60.0
MIN_FRAMES = 100  # normal frames in an hour below which its PSI is too noisy to alert on


class DriftCollector(Collector):
    """A prometheus_client collector over the drift view, cached for ``cache_s`` seconds."""

    def __init__(self, store: StoreHolder, cache_s: float = CACHE_S, min_frames: int = MIN_FRAMES) -> None:
        self.store = store
        self.cache_s = cache_s
        self.min_frames = min_frames
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._queried_at = float("-inf")  # time.monotonic() of the last attempt
        self._updated_at = 0.0  # time.time() of the last success

    def describe(self) -> list:
        return []  # registering must not query ClickHouse (prometheus_client calls collect() otherwise)

    def _query(self) -> list[dict[str, Any]]:
        from lineguard.analytics import cookbook

        until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
        since = until - dt.timedelta(hours=2)  # the drift_psi query starts at since's hour: this one and the last
        rows = self.store.run(lambda s: cookbook.run(s, "drift_psi", grain="hour", since=since, until=until,
                                                     line_id=""))
        return latest_per_line(rows, self.min_frames)

    def rows(self) -> list[dict[str, Any]]:
        """The cached figures, refreshed first when older than ``cache_s``."""
        with self._lock:
            if time.monotonic() - self._queried_at >= self.cache_s and self._may_query():
                self._queried_at = time.monotonic()
                try:
                    self._rows = self._query()
                    self._updated_at = time.time()
                except Exception as exc:  # noqa: BLE001 - a scrape must answer; the timestamp shows the age
                    log.warning("score drift for /metrics unavailable (%s: %s); keeping the last figures",
                                type(exc).__name__, exc)
            return list(self._rows)

    def _may_query(self) -> bool:
        return self.store.settings.sinks.clickhouse.backend == "server" or self.store.opened

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self.rows()
        psi = GaugeMetricFamily("lineguard_score_drift_psi",
                                "PSI of the normal-judged scores vs the model's calibration histogram, newest "
                                "hour with enough frames (0.1 watch, 0.25 drift)", labels=["line", "product"])
        frames = GaugeMetricFamily("lineguard_score_drift_frames",
                                   "Normal-judged frames behind lineguard_score_drift_psi", labels=["line", "product"])
        for row in rows:
            labels = [row["line_id"], row["model_name"]]
            psi.add_metric(labels, float(row["psi"]))
            frames.add_metric(labels, float(row["frames"]))
        yield psi
        yield frames
        if self._updated_at:
            yield GaugeMetricFamily("lineguard_score_drift_updated_timestamp_seconds",
                                    "When the drift figures were last read from ClickHouse", value=self._updated_at)


def latest_per_line(rows: list[dict[str, Any]], min_frames: int) -> list[dict[str, Any]]:
    """Per (line, product): the newest hour with at least ``min_frames`` frames; within an hour scored by two
    model versions (a model change), the version that scored the most frames."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row["frames"] < min_frames or row["psi"] is None or not math.isfinite(row["psi"]):
            continue
        key = (row["line_id"], row["model_name"])
        held = best.get(key)
        if held is None or (row["period"], row["frames"]) > (held["period"], held["frames"]):
            best[key] = row
    return [best[key] for key in sorted(best)]
