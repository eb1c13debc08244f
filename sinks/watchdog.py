"""The stuck-consumer watchdog: when to give up on a consumer and open a new one.

Seen once in about twenty broker restarts: librdkafka's request to the group coordinator never
left its queue, the session timed out, and the sink sat idle while its lag grew; with the broker
frozen, a commit is never answered. The watchdog says when either has lasted
``sinks.rejoin_timeout_s``; the runner then replaces the consumer. Messages it had not committed
are read again by the new one (at-least-once; the stores are idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .commits import CommitTracker


class StuckConsumerWatchdog:
    """Whether the coordinator stopped answering: partitions taken with no assignment (even an
    empty one) since, or the oldest commit unanswered, for ``timeout_s``."""

    def __init__(self, timeout_s: float, commits: CommitTracker,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.commits = commits
        self._clock = clock
        self._unassigned_since: float | None = None

    def assigned(self) -> None:
        self._unassigned_since = None

    def unassigned(self) -> None:
        """Partitions were taken (revoked or lost); an assignment should follow."""
        self._unassigned_since = self._clock()

    def reset(self) -> None:
        """A new consumer: nothing taken from it yet."""
        self._unassigned_since = None

    def waiting(self) -> str | None:
        """Partitions were taken and no assignment followed yet (a rebalance in progress), or None."""
        return None if self._unassigned_since is None else "rebalancing"

    def stuck(self) -> str | None:
        """Why the consumer looks stuck, or None."""
        if self._unassigned_since is not None:
            waited = self._clock() - self._unassigned_since
            if waited >= self.timeout_s:
                return f"no partitions assigned for {waited:.0f}s since they were taken"
        unanswered = self.commits.oldest_unanswered_s()
        if unanswered is not None and unanswered >= self.timeout_s:
            return f"a commit unanswered for {unanswered:.0f}s"
        return None

