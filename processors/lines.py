"""Which lines a processor serves, and following lines that are created while it runs.

``processor.lines`` (or ``--lines``) holds line ids and glob patterns of line ids: ``*`` is every line,
``plant2-*`` every line whose id starts so. Listed ids are served from the start (their topics are
created if missing); a pattern is matched against the cluster's frame topics every
:data:`LINE_DISCOVERY_S` seconds, and a match's topic is added to the running workers' subscription
(a rebalance then spreads its partitions, see :mod:`.assignor`). faust's own ``pattern=`` topics are
not routed to agents by faust-streaming's conductor, hence this watcher.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from lineguard.config import KafkaConfig
from lineguard.kafka import admin_client
from lineguard.kafka.clients import METADATA_REFRESH_MS
from lineguard.schemas import topics

log = logging.getLogger("lineguard.processor.lines")

# A new line's frame topic is subscribed within this long of its creation (plus one rebalance);
# the same interval as the consumers' metadata refresh, which notices new partitions of a line.
LINE_DISCOVERY_S = METADATA_REFRESH_MS / 1000
_GLOB = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]{1,64}$")
_FRAME_TOPIC = re.compile(topics.pattern("frames"))


class LineSelection:
    """Listed line ids and line-id patterns; which frame topics they select."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.ids: list[str] = []
        self.patterns: list[str] = []
        for entry in dict.fromkeys(e.strip() for e in entries if e.strip()):
            if any(c in entry for c in "*?["):
                if not _GLOB.match(entry):
                    raise ValueError(f"line pattern {entry!r}: a glob of line-id characters, e.g. 'plant2-*'")
                self.patterns.append(entry)
            else:
                self.ids.append(topics.check_line_id(entry))

    def __str__(self) -> str:
        return ",".join(self.ids + self.patterns)

    def matches(self, line_id: str) -> bool:
        return line_id in self.ids or any(fnmatch.fnmatchcase(line_id, p) for p in self.patterns)

    def frame_topics(self, existing: Iterable[str] = ()) -> list[str]:
        """The listed lines' frame topics and those of ``existing`` topics whose line a pattern matches."""
        found = [t for t in existing if _FRAME_TOPIC.match(t) and self.matches(topics.line_of(t))]
        return sorted(set(found) | {topics.frames(line) for line in self.ids})


def existing_topics(admin: Any, timeout_s: float = 10.0) -> list[str]:
    """The cluster's topics that have partitions (a confluent-kafka AdminClient's metadata)."""
    metadata = admin.list_topics(timeout=timeout_s)
    return [name for name, t in metadata.topics.items() if t.error is None and t.partitions]


def wait_for_frame_topics(selection: LineSelection, kafka_cfg: KafkaConfig) -> list[str]:
    """The selected frame topics, once there is at least one (a consumer cannot subscribe to none)."""
    if not selection.patterns:
        return selection.frame_topics()
    admin = admin_client(kafka_cfg)
    announced = False
    while True:
        found = selection.frame_topics(existing_topics(admin))
        if found:
            return found
        if not announced:
            log.info("no line matches %s yet; waiting for one", selection)
            announced = True
        time.sleep(LINE_DISCOVERY_S)


class LineWatcher:
    """Adds the frame topics of new matching lines to a running faust app's source topic."""

    def __init__(self, app: Any, source: Any, selection: LineSelection, kafka_cfg: KafkaConfig) -> None:
        self.app = app
        self.source = source  # the agent's faust Topic; its clones share the ``topics`` list
        self.selection = selection
        self.admin = admin_client(kafka_cfg)

    async def refresh(self) -> list[str]:
        """Subscribe to new lines' frame topics; return the topics added (none while the group rebalances)."""
        existing = await asyncio.get_running_loop().run_in_executor(None, existing_topics, self.admin)
        new = [t for t in self.selection.frame_topics(existing) if t not in self.source.topics]
        if not new or self.app.rebalancing:  # a rebalance in progress: the next refresh subscribes
            return []
        log.info("new lines %s: subscribing to %s", [topics.line_of(t) for t in new], new)
        self.source.topics.extend(new)  # in place: the agent's stream holds a clone of this Topic
        try:
            # What faust's conductor does when its topics change, without its 45 s coalescing sleep.
            await self.app.consumer.subscribe(await self.app.topics._update_indices())
        except BaseException:
            del self.source.topics[-len(new):]  # tried again at the next refresh
            raise
        return new
