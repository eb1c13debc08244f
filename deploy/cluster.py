"""The stack's Kafka as a whole: one node or a KRaft cluster, and per-node control for fault tests.

With N nodes (``lineguard stack up --brokers N``) every node is broker and
controller, the N controllers form the quorum, and all share one cluster id
(``lineguard.deploy.broker`` configures each node). A state dir keeps the
node count it was first started with, in its identity, because each node's
storage is formatted for that quorum; ``stack down --purge`` forgets it.

Nodes are numbered 1..N like Kafka's ``node.id``, so ``leader_of`` answers
with the number that ``kill_broker`` and friends take.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from .broker import KafkaBroker, node_port_key
from .identity import StackIdentity
from .processes import StackError, log, wait_until

BROKERS_KEY = "kafka_brokers"  # the node count, in the stack's identity


def recorded_node_count(identity: StackIdentity, state_dir: Path) -> int | None:
    """The node count a state dir was started with, or None when no Kafka has started there yet."""
    if identity.exists():
        recorded = identity.load().get(BROKERS_KEY)
        if recorded is not None:
            return int(recorded)
    # State dirs from before clusters existed hold one formatted node.
    return 1 if (state_dir / "kafka" / "data" / "meta.properties").exists() else None


class KafkaCluster:
    """The Kafka nodes of one state dir; ``nodes[0]`` is node 1."""

    def __init__(self, nodes: list[KafkaBroker], identity: StackIdentity) -> None:
        self.nodes = nodes
        self.identity = identity

    @property
    def size(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        if not 1 <= node_id <= self.size:
            raise ValueError(f"no Kafka node {node_id}: the stack has nodes 1..{self.size}")
        return self.nodes[node_id - 1]

    def bootstrap(self, identity: dict[str, Any] | None = None) -> str:
        """Every node's address, comma-separated: clients bootstrap from whichever answers."""
        identity = identity or self.identity.load()
        return ",".join(node.address(identity) for node in self.nodes)

    def running(self) -> dict[int, int | None]:
        """{node id: pid or None}."""
        return {node.node_id: node.process.running() for node in self.nodes}

    # ---- starting and stopping

    def start(self, node_ids: list[int] | None = None, timeout_s: float = 120.0, keep_ports: bool = True) -> None:
        """Start the given nodes (all by default) that are not running, and wait until each is ready.

        All are launched before any is awaited: a cluster's first node cannot
        be ready until a majority of controllers runs. Ports may move (``keep_ports``
        False) only while no node runs, since running nodes know the others' ports.
        """
        wanted = [self.node(n) for n in (node_ids or range(1, self.size + 1))]
        to_start = [node for node in wanted if node.process.running() is None]
        if not to_start:
            return
        identity = self._identity_with_every_port()
        keep = keep_ports or any(pid is not None for pid in self.running().values())
        for node in to_start:
            self.identity.claim_ports(identity, node.port_keys(identity), keep=keep, service=f"Kafka node {node.node_id}")
        launched = [(node, node.launch(identity)) for node in to_start]
        deadline = time.monotonic() + timeout_s
        for node, pid in launched:
            node.wait_ready(pid, max(1.0, deadline - time.monotonic()))

    def stop(self, node_ids: list[int] | None = None, timeout_s: float = 30.0) -> bool:
        """Stop the given nodes (all by default), overlapping their shutdowns; True if any was running."""
        wanted = [self.node(n) for n in (node_ids or range(1, self.size + 1))]
        for node in wanted:
            node.process.terminate()
        return any([node.stop(timeout_s) for node in wanted])

    def rolling_restart(self, timeout_s: float = 120.0) -> None:
        """Stop and start one node at a time, each back in every ISR before the next goes down."""
        for node in self.nodes:
            started = time.monotonic()
            node.stop()
            self.start([node.node_id], timeout_s)
            log.info("Kafka node %d restarted in %.1fs", node.node_id, time.monotonic() - started)

    # ---- faults

    def kill(self, node_id: int) -> None:
        """SIGKILL a node: no controlled shutdown, its data stays as a crash leaves it."""
        node = self.node(node_id)
        pid = node.process.running()
        if pid is None:
            raise StackError(f"Kafka node {node_id} is not running")
        node.process.send(signal.SIGKILL)
        wait_until(lambda: not node.process.alive(pid), 10, f"Kafka node {node_id} to die")
        node.process.pid_file.unlink(missing_ok=True)

    def freeze(self, node_id: int) -> None:
        """SIGSTOP a node: its connections stay open and it answers nothing, like a hung host."""
        self._signal_running(node_id, signal.SIGSTOP)
        # The signal is delivered asynchronously: return once the node is stopped, so a fault's
        # clock (and a status read) starts from a frozen node.
        wait_until(lambda: self.frozen(node_id), 10, f"Kafka node {node_id} to stop on SIGSTOP")

    def thaw(self, node_id: int) -> None:
        self._signal_running(node_id, signal.SIGCONT)
        wait_until(lambda: not self.frozen(node_id), 10, f"Kafka node {node_id} to resume on SIGCONT")

    def frozen(self, node_id: int) -> bool:
        return self.node(node_id).process.stopped()

    def _signal_running(self, node_id: int, sig: int) -> None:
        node = self.node(node_id)
        if node.process.running() is None:
            raise StackError(f"Kafka node {node_id} is not running")
        node.process.send(sig)

    # ---- what the cluster says

    def leader_of(self, topic: str, partition: int, timeout_s: float = 10.0) -> int | None:
        """The node id leading ``topic``'s ``partition``, or None while it has no leader."""
        from lineguard.config import KafkaConfig
        from lineguard.kafka import admin_client

        admin = admin_client(KafkaConfig(bootstrap_servers=self.bootstrap()))
        deadline = time.monotonic() + timeout_s
        while True:
            # A broker may answer before it has learned of a topic just created: ask again until the deadline.
            found = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if found is not None and found.error is None and partition in found.partitions:
                leader = found.partitions[partition].leader
                return leader if leader >= 0 else None
            if time.monotonic() > deadline:
                raise StackError(f"no partition {topic}[{partition}] in the cluster's metadata")
            time.sleep(0.2)

    def _identity_with_every_port(self) -> dict[str, Any]:
        """The identity, with ports picked for nodes that have none yet and the node count recorded."""
        identity = self.identity.load()
        for node_id in range(2, self.size + 1):
            for base in ("kafka_port", "controller_port"):
                self.identity.add_port(identity, node_port_key(base, node_id))
        if identity.get(BROKERS_KEY) != self.size:
            identity[BROKERS_KEY] = self.size
            self.identity.save(identity)
        return identity
