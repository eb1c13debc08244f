"""Retrying a sink's failing operation: transient failures back off, permanent ones are raised."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from lineguard.backoff import Backoff
from lineguard.logs import get_logger

from . import metrics as prom
from .errors import PermanentWriteError

log = get_logger(__name__)


class SinkStopped(Exception):
    """Raised inside the loop when a stop was requested while a write was still failing."""


class RetryCounts(Protocol):
    retries: int


class Retrier:
    """Runs an operation until it succeeds. After each transient failure it counts, logs and
    calls ``wait`` with the back-off's delay (the runner waits polling, paused, so it stays in
    its group); a :class:`PermanentWriteError` is raised at once; a stop request while failing
    ends it with :class:`SinkStopped`."""

    def __init__(self, kind: str, backoff: Backoff, counts: RetryCounts, stopped: Callable[[], bool],
                 wait: Callable[[float], None]) -> None:
        self.kind = kind
        self.backoff = backoff
        self.counts = counts
        self.stopped = stopped
        self.wait = wait
        self.failing_since: float | None = None  # while some operation is failing
        self._m_retrying = prom.RETRYING.labels(kind)

    def __call__(self, operation: Callable[[], None], what: str) -> None:
        attempt = 0
        while True:
            try:
                operation()
            except PermanentWriteError:
                self._end(attempt, what, "failed for good")
                raise
            except Exception as exc:
                if self.stopped():
                    raise SinkStopped() from exc
                delay_s = self.backoff.delay(attempt)
                attempt += 1
                self.counts.retries += 1
                prom.RETRIES.labels(self.kind, what).inc()
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self._m_retrying.set(1)
                log.warning("sink %s: %s failed (attempt %d, retrying in %.2fs): %s: %s",
                            self.kind, what, attempt, delay_s, type(exc).__name__, exc)
                self.wait(delay_s)
            else:
                self._end(attempt, what, "succeeded")
                return

    def _end(self, attempt: int, what: str, outcome: str) -> None:
        if not attempt:
            return
        log.info("sink %s: %s %s after %d failed attempts (%.1fs)", self.kind, what, outcome,
                 attempt, time.monotonic() - (self.failing_since or time.monotonic()))
        self.failing_since = None
        self._m_retrying.set(0)
