"""The runner's member of the consumer group: opened with the sinks' settings, replaced when
stuck, closed without waiting on a coordinator that does not answer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer

from lineguard import kafka
from lineguard.config import Settings
from lineguard.logs import get_logger

log = get_logger(__name__)

MAX_POLL_INTERVAL_MS = 10 * 60 * 1000


def close_in_background(closable: Any, wait_s: float, name: str) -> bool:
    """Close ``closable`` in a helper thread, waiting at most ``wait_s``: librdkafka's close waits
    for the answers to commits sent, without limit, while the coordinator does not answer.
    True when it closed within ``wait_s``."""
    def close() -> None:
        try:
            closable.close()
        except Exception as exc:  # noqa: BLE001 - nothing is left to do with it
            log.warning("%s: closing a client: %s", name, exc)
    closer = threading.Thread(target=close, name=f"{name}-close", daemon=True)
    closer.start()
    closer.join(wait_s)
    return not closer.is_alive()


class GroupMember:
    """One subscribed Consumer at a time. The callbacks given to a consumer are ignored once it
    has been replaced (or left closing in the background): it must not touch the runner's state."""

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        subscription: list[str],
        name: str,
        callbacks: dict[str, Callable[..., None]],
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.subscription = subscription
        self.name = name
        self.callbacks = callbacks  # on_commit, on_assign, on_revoke, on_lost
        self.overrides = dict(overrides or {})
        self.consumer: Consumer | None = None
        self._generation = 0

    def open(self) -> Consumer:
        consumer = kafka.consumer_client(
            self.settings.kafka,
            self.group_id,
            **{
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                # New line topics matching the regex are picked up within this time.
                "topic.metadata.refresh.interval.ms": 10_000,
                "on_commit": self._current(self.callbacks["on_commit"]),
                **self.overrides,
            },
        )
        consumer.subscribe(self.subscription, **{
            event: self._current(self.callbacks[event]) for event in ("on_assign", "on_revoke", "on_lost")})
        self.consumer = consumer
        return consumer

    def _current(self, callback: Callable[..., None]) -> Callable[..., None]:
        generation = self._generation

        def guarded(*args: Any) -> None:
            if generation == self._generation:
                callback(*args)
        return guarded

    def replace(self) -> Consumer:
        """Close the consumer in the background, without waiting, and subscribe a new one."""
        old = self.consumer
        self._generation += 1  # from here on the old consumer's callbacks are ignored
        if old is not None:
            close_in_background(old, 0, self.name)
        return self.open()

    def close(self, wait_s: float) -> None:
        """Leave the group (commits nothing: auto commit is off), waiting at most ``wait_s``."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            if not close_in_background(consumer, wait_s, self.name):
                self._generation += 1  # its late callbacks are ignored
                log.warning("%s: the consumer is still closing after %.0fs; left to finish in the background",
                            self.name, wait_s)
        finally:
            self.consumer = None
