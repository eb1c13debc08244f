"""Dynamic micro-batching per model, as Triton's dynamic batcher does.

Items wait in one queue per key (the model they need). A queue is flushed
when it holds ``max_batch`` items or its oldest item has waited
``max_wait_ms``, whichever comes first. A flush has two phases: ``prepare``
(decode and score; two batches may prepare at once, so one decodes while the
other scores) and ``publish``, which runs strictly in flush order per key, so
a camera's verdicts leave in the order its frames arrived. ``put`` blocks once ``max_pending``
items are waiting in all queues together: that back-pressure stops the
consumer loop, so faust's stream buffer fills and it pauses fetching instead
of holding an unbounded number of images in memory.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class BatchLimits:
    max_batch: int
    max_wait_ms: int


@dataclass
class _Queue(Generic[T]):
    items: list[T] = field(default_factory=list)
    first_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        limits_for: Callable[[str], BatchLimits],
        prepare: Callable[[str, list[T]], Awaitable[Any]],
        publish: Callable[[str, list[T], Any], Awaitable[Any]],
        max_pending: int = 256,
        max_concurrent_flushes: int = 2,
    ) -> None:
        self._limits_for = limits_for
        self._prepare = prepare
        self._publish = publish
        self._queues: dict[str, _Queue[T]] = {}
        # Per key, the future the next flush's publish waits for.
        self._published: dict[str, asyncio.Future] = {}
        self._capacity = asyncio.Semaphore(max_pending)
        # Two flushes at once: one decodes its frames while the other scores.
        self._flush_slots = asyncio.Semaphore(max_concurrent_flushes)
        self._tasks: set[asyncio.Task] = set()
        self.flushed_batches = 0
        self.flushed_items = 0

    @property
    def pending(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    async def put(self, key: str, item: T) -> None:
        await self._capacity.acquire()
        queue = self._queues.setdefault(key, _Queue())
        limits = self._limits_for(key)
        queue.items.append(item)
        if len(queue.items) == 1:
            queue.first_at = time.monotonic()
            loop = asyncio.get_running_loop()
            queue.timer = loop.call_later(limits.max_wait_ms / 1000.0, self._flush_key, key)
        if len(queue.items) >= limits.max_batch:
            self._flush_key(key)

    def _flush_key(self, key: str) -> None:
        queue = self._queues.get(key)
        if not queue or not queue.items:
            return
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        items, queue.items = queue.items, []
        previous = self._published.get(key)
        mine = asyncio.get_running_loop().create_future()
        self._published[key] = mine
        task = asyncio.ensure_future(self._run_flush(key, items, previous, mine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_flush(self, key: str, items: list[T], previous: asyncio.Future | None,
                         mine: asyncio.Future) -> None:
        try:
            async with self._flush_slots:
                prepared = await self._prepare(key, items)
            if previous is not None:
                await asyncio.shield(previous)
            await self._publish(key, items, prepared)
            self.flushed_batches += 1
            self.flushed_items += len(items)
        finally:
            mine.set_result(None)
            if self._published.get(key) is mine:
                del self._published[key]
            for _ in items:
                self._capacity.release()

    async def drain(self) -> None:
        """Flush everything waiting and wait for all flushes to finish."""
        for key in list(self._queues):
            self._flush_key(key)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
