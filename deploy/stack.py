"""The local stack: Kafka (one node, or a KRaft cluster of N) and an S3 server, as plain processes (no Docker).

``LocalStack`` is the facade the CLI, the demo, benchmarks and tests use; the
jobs behind it each have a room: ``fetch`` (Kafka's jars, the versitygw
build), ``broker`` (a Kafka node's configuration and lifecycle), ``cluster``
(the nodes together, per-node faults, leaders), ``s3server``
(versitygw's lifecycle), ``processes`` (detached start, pid files, stop) and
``identity`` (ports and keys kept across down/up).

Everything a stack owns lives in its state dir::

    <state_dir>/stack.json           addresses + credentials while it runs (read by lineguard.config)
    <state_dir>/stack-identity.json  ports, cluster id and keys, kept across down/up
    <state_dir>/kafka/               server.properties, log4j2.xml, data/ (node 1; kafka-2/, ... in a cluster)
    <state_dir>/s3/                  buckets (one folder each); s3-meta/ if the fs lacks user xattrs
    <state_dir>/logs/                kafka.log (kafka-2.log, ...), s3.log
    <state_dir>/run/                 pid files

Run ``lineguard stack fetch`` to download/build without starting. Security
options (``sasl``, ``authorizer``, ``super_users``) are described in
``lineguard.deploy.broker``; SCRAM users are added to the running broker with
:meth:`LocalStack.add_scram_user`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lineguard.config import KafkaConfig, StackConfig

from .broker import KafkaBroker, node_name, node_port_key
from .cluster import KafkaCluster, recorded_node_count
from .fetch import Downloads, FetchTimes
from .identity import StackIdentity
from .processes import Service, StackError, file_lock
from .s3server import S3Server

__all__ = ["FetchTimes", "LocalStack", "StackError"]

# The settings model is the one source of the stack's defaults.
_STACK_DEFAULTS = StackConfig()
_DEFAULT_MESSAGE_MAX_BYTES: int = KafkaConfig.model_fields["message_max_bytes"].default


class LocalStack:
    """Kafka and an S3 server for one state dir; see the module docstring.

    ``brokers`` asks for that many Kafka nodes; None means what the state dir
    was started with (1 for a new one). ``kafka_heap`` None means 512m for one
    node, 384m each for a cluster.
    """

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        kafka_version: str = _STACK_DEFAULTS.kafka_version,
        versitygw_version: str = _STACK_DEFAULTS.versitygw_version,
        message_max_bytes: int = _DEFAULT_MESSAGE_MAX_BYTES,
        kafka_heap: str | None = None,
        sasl: bool = False,
        authorizer: bool = False,
        super_users: tuple[str, ...] = (),
        brokers: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.kafka_version = kafka_version
        self.versitygw_version = versitygw_version
        self.message_max_bytes = message_max_bytes
        self.kafka_heap = kafka_heap
        self.sasl = sasl
        self.authorizer = authorizer
        self.super_users = tuple(super_users)  # SASL user names with every right (besides ANONYMOUS)
        self.requested_brokers = brokers
        self._identity = StackIdentity(self.state_dir / "stack-identity.json")

    @classmethod
    def from_settings(cls, settings: Any) -> LocalStack:
        """Build from ``lineguard.config.Settings``."""
        return cls(
            state_dir=settings.state_dir,
            cache_dir=settings.stack.cache_dir,
            kafka_version=settings.stack.kafka_version,
            versitygw_version=settings.stack.versitygw_version,
            message_max_bytes=settings.kafka.message_max_bytes,
            brokers=settings.stack.brokers,
        )

    # ---- the parts, built from the current options (callers may change them, e.g. message_max_bytes)

    @property
    def downloads(self) -> Downloads:
        return Downloads(self.cache_dir, self.kafka_version, self.versitygw_version)

    @property
    def brokers(self) -> int:
        """How many Kafka nodes this stack has: the state dir's count once started, else the one asked for."""
        return recorded_node_count(self._identity, self.state_dir) or self.requested_brokers or 1

    @property
    def kafka(self) -> KafkaCluster:
        count = self.brokers
        heap = self.kafka_heap or ("512m" if count == 1 else "384m")
        nodes = [KafkaBroker(self.state_dir, self.downloads.kafka_libs, self.kafka_version, self._identity,
                             message_max_bytes=self.message_max_bytes, kafka_heap=heap, sasl=self.sasl,
                             authorizer=self.authorizer, super_users=self.super_users,
                             node_id=node_id, node_count=count)
                 for node_id in range(1, count + 1)]
        return KafkaCluster(nodes, self._identity)

    @property
    def broker(self) -> KafkaBroker:
        """Kafka node 1 (the only one of a single-broker stack)."""
        return self.kafka.node(1)

    @property
    def s3(self) -> S3Server:
        return S3Server(self.state_dir, self.versitygw_version, self._identity)

    def _process(self, service: str) -> Service:
        """``s3``, ``kafka`` (node 1) or ``kafka-N`` (node N of a cluster)."""
        if service == "s3":
            return self.s3.process
        for node in self.kafka.nodes:
            if node.name == service:
                return node.process
        raise ValueError(f"unknown service {service!r}: expected 's3' or one of "
                         + ", ".join(repr(node_name(n)) for n in range(1, self.brokers + 1)))

    # ---- paths

    @property
    def stack_json(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def kafka_libs(self) -> Path:
        return self.downloads.kafka_libs

    @property
    def versitygw_bin(self) -> Path:
        return self.downloads.versitygw_bin

    def log_path(self, service: str) -> Path:
        return self._process(service).log_file

    def pid_path(self, service: str) -> Path:
        return self._process(service).pid_file

    # ---- fetch

    def check_prerequisites(self, with_s3: bool = True) -> None:
        """Raise one StackError naming every missing tool, before any slow step starts."""
        self.downloads.check_prerequisites(with_s3)

    def fetch(self, with_s3: bool = True) -> FetchTimes:
        """Download Kafka's jars and build versitygw where missing; quick when cached."""
        return self.downloads.fetch(with_s3)

    def fetch_kafka(self) -> Path:
        return self.downloads.fetch_kafka()

    def fetch_versitygw(self) -> Path:
        return self.downloads.fetch_versitygw()

    # ---- the services

    def running(self, service: str) -> int | None:
        """The pid of the stack's ``kafka`` (node 1), ``kafka-N`` or ``s3`` process, or None."""
        return self._process(service).running()

    def start_kafka(self, timeout_s: float = 120.0, keep_ports: bool = True) -> int:
        """Start every Kafka node not running (fetching first), wait until all serve; return node 1's pid.

        ``keep_ports`` (the default, used by restarts) insists on the remembered
        ports so clients reconnect to the same addresses; ``up`` passes False to
        move to free ports when old ones are taken.
        """
        self._check_broker_count()
        cluster = self.kafka
        if any(pid is None for pid in cluster.running().values()):
            self.check_prerequisites(with_s3=False)
            self.fetch_kafka()
            try:
                cluster.start(timeout_s=timeout_s, keep_ports=keep_ports)
            finally:
                self._update_stack_json()
        return self._pid_of(node_name(1))

    def stop_kafka(self, timeout_s: float = 30.0) -> bool:
        """Stop every Kafka node (controlled shutdown on SIGTERM), keeping data and ports."""
        stopped = self.kafka.stop(timeout_s=timeout_s)
        self._update_stack_json()
        return stopped

    def restart_kafka(self) -> int:
        """Restart Kafka, same addresses and data: one node stops and starts; a cluster rolls node by node."""
        if self.brokers == 1:
            self.stop_kafka()
            return self.start_kafka(keep_ports=True)
        self.kafka.rolling_restart()
        self._update_stack_json()
        return self._pid_of(node_name(1))

    # ---- one node of a cluster (fault tests); node ids are 1..brokers, as leader_of answers

    def start_broker(self, node_id: int, timeout_s: float = 120.0) -> int:
        """Start one node and wait until it is back in every ISR it belongs to."""
        self.kafka.start([node_id], timeout_s=timeout_s)
        self._update_stack_json()
        return self._pid_of(node_name(node_id))

    def stop_broker(self, node_id: int, timeout_s: float = 30.0) -> bool:
        """Controlled shutdown of one node (leadership moves first)."""
        stopped = self.kafka.stop([node_id], timeout_s=timeout_s)
        self._update_stack_json()
        return stopped

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one node."""
        self.kafka.kill(node_id)
        self._update_stack_json()

    def freeze_broker(self, node_id: int) -> None:
        """SIGSTOP one node; ``thaw_broker`` resumes it."""
        self.kafka.freeze(node_id)

    def thaw_broker(self, node_id: int) -> None:
        self.kafka.thaw(node_id)

    def leader_of(self, topic: str, partition: int) -> int | None:
        """The node id leading ``topic``'s ``partition``, or None while it has none."""
        return self.kafka.leader_of(topic, partition)

    def _pid_of(self, service: str) -> int:
        pid = self.running(service)
        if pid is None:
            raise StackError(f"{service} exited right after it started; see {self.log_path(service)}")
        return pid

    def _check_broker_count(self) -> None:
        recorded = recorded_node_count(self._identity, self.state_dir)
        if self.requested_brokers and recorded and recorded != self.requested_brokers:
            raise StackError(
                f"{self.state_dir} holds a {recorded}-broker Kafka; it cannot become {self.requested_brokers} "
                "(each node's storage is formatted for its quorum): use another state dir, "
                "or `lineguard stack down --purge` it first")

    @property
    def sasl_bootstrap(self) -> str | None:
        """``127.0.0.1:<port>`` of the SASL listener, or None when the stack has none."""
        return self.broker.sasl_bootstrap

    def add_scram_user(self, name: str, password: str, mechanism: str = "SCRAM-SHA-256",
                       timeout_s: float = 30.0) -> None:
        """Create or update a SCRAM user on the running broker (through the plaintext listener)."""
        self.broker.add_scram_user(name, password, mechanism, timeout_s)

    def start_s3(self, timeout_s: float = 60.0, keep_ports: bool = True) -> int:
        pid = self.running("s3")
        if pid is not None:
            return pid
        pid = self.s3.start(self.fetch_versitygw(), timeout_s, keep_ports=keep_ports)
        self._update_stack_json()
        return pid

    def stop_s3(self, timeout_s: float = 15.0) -> bool:
        stopped = self.s3.stop(timeout_s)
        self._update_stack_json()
        return stopped

    # ---- the whole stack

    def up(self, with_s3: bool = True) -> dict[str, Any]:
        """Fetch what's missing, start what's not running, wait for all; return stack.json's content."""
        self._check_broker_count()
        self.check_prerequisites(with_s3)
        with file_lock(self.state_dir / "run" / "stack.lock"):
            self.fetch(with_s3=with_s3)
            self.start_kafka(keep_ports=False)
            if with_s3:
                self.start_s3(keep_ports=False)
            return self._update_stack_json()

    def down(self, purge: bool = False) -> None:
        """Stop every process and remove stack.json; ``purge`` also deletes topics, buckets, logs, the identity."""
        cluster, s3 = self.kafka, self.s3
        with file_lock(self.state_dir / "run" / "stack.lock"):
            # SIGTERM all first so their shutdowns overlap.
            s3.process.terminate()
            cluster.stop(timeout_s=30.0)
            s3.stop(15.0)
            self.stack_json.unlink(missing_ok=True)
            if purge:
                kafka_dirs = [node.kafka_dir for node in cluster.nodes]
                for path in (*kafka_dirs, s3.root, s3.sidecar, self.state_dir / "logs", self._identity.path):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """What runs where: {kafka|s3: {running, pid, address, log}}, kafka's ``nodes``, the state dir.

        ``kafka`` sums the cluster up: running when every node runs, node 1's
        pid and log, the bootstrap list as address; ``nodes`` has each node.
        """
        identity = self._identity.load() if self._identity.exists() else {}
        cluster = self.kafka
        nodes = []
        for node in cluster.nodes:
            pid = node.process.running()
            port = identity.get(node_port_key("kafka_port", node.node_id))
            nodes.append({"node": node.node_id, "running": pid is not None, "pid": pid,
                          "frozen": pid is not None and node.process.stopped(),
                          "address": f"127.0.0.1:{port}" if port else None, "log": str(node.process.log_file)})
        addresses = [n["address"] for n in nodes if n["address"]]
        s3_pid, s3_port = self.running("s3"), identity.get("s3_port")
        return {
            "state_dir": str(self.state_dir),
            "kafka": {"running": all(n["running"] for n in nodes), "pid": nodes[0]["pid"],
                      "address": ",".join(addresses) or None, "log": nodes[0]["log"], "nodes": nodes},
            "s3": {"running": s3_pid is not None, "pid": s3_pid,
                   "address": f"127.0.0.1:{s3_port}" if s3_port else None, "log": str(self.log_path("s3"))},
        }

    def _update_stack_json(self) -> dict[str, Any]:
        """Rewrite stack.json from what runs now; remove it when nothing does."""
        cluster = self.kafka
        kafka_pids, s3_pid = cluster.running(), self.running("s3")
        if all(pid is None for pid in kafka_pids.values()) and s3_pid is None and not self.stack_json.exists():
            return {}  # no stack was up: nothing to describe
        identity = self._identity.load()
        info: dict[str, Any] = {
            # Every node's address stays in the file while it restarts: clients keep retrying them.
            "kafka_bootstrap": cluster.bootstrap(identity),
            "kafka_message_max_bytes": self.message_max_bytes,
            "pids": {},
            "logs": {node.name: str(node.process.log_file) for node in cluster.nodes},
        }
        if cluster.size > 1:
            info["kafka_brokers"] = cluster.size
        sasl = [address for address in (node.sasl_bootstrap for node in cluster.nodes) if address]
        if sasl and len(sasl) == cluster.size:
            info["kafka_sasl_bootstrap"] = ",".join(sasl)
        for node in cluster.nodes:
            if kafka_pids[node.node_id] is not None:
                info["pids"][node.name] = kafka_pids[node.node_id]
        if s3_pid is not None:
            info.update(
                s3_endpoint=f"127.0.0.1:{identity['s3_port']}",
                s3_access_key=identity["s3_access_key"],
                s3_secret_key=identity["s3_secret_key"],
            )
            info["pids"]["s3"] = s3_pid
            info["logs"]["s3"] = str(self.log_path("s3"))
        tmp = self.stack_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.stack_json)
        return info
