"""One node of the stack's Kafka: its configuration (limits, SASL, ACLs), launch, readiness, stop.

Each node is one process in KRaft mode, both broker and controller, run from
the jars in the cache as ``java -cp 'libs/*' kafka.Kafka server.properties``.
Node 1's files live in ``<state_dir>/kafka/``, node N's (a cluster, see
``lineguard.deploy.cluster``) in ``<state_dir>/kafka-N/``: server.properties
and log4j2.xml, rewritten on every start, and data/. The controller quorum is
static (``controller.quorum.voters``: every node), so ports may change between
runs of the whole cluster.

Security is off by default: ``sasl`` adds a ``SASL_PLAINTEXT`` listener
(SCRAM-SHA-256/512) beside the plaintext one, and ``authorizer`` turns on
KRaft's ``StandardAuthorizer`` with the plaintext and controller listeners'
principal (``User:ANONYMOUS``) as super user, so the stack still administers
itself while SASL clients get only what ACLs grant them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from .fetch import JAVA_HINT
from .identity import StackIdentity
from .processes import MiB, Service, StackError, log, require_tool, run_logged, tcp_open

# The broker accepts this much more than the configured message size: topic limits
# (lineguard.kafka) add batch framing on top of message_max_bytes and must fit.
BROKER_HEADROOM_BYTES = 1 * MiB


def node_name(node_id: int) -> str:
    """``kafka`` for node 1 (the single-broker stack's name), ``kafka-N`` for the others."""
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


def node_port_key(base: str, node_id: int) -> str:
    """The identity key of a node's port: ``kafka_port`` for node 1, ``kafka_port_2`` for node 2."""
    return base if node_id == 1 else f"{base}_{node_id}"


class KafkaBroker:
    """Node ``node_id`` of a ``node_count``-node cluster in one state dir, configured from the stack's options."""

    def __init__(self, state_dir: Path, kafka_libs: Path, kafka_version: str, identity: StackIdentity,
                 message_max_bytes: int, kafka_heap: str, sasl: bool, authorizer: bool,
                 super_users: tuple[str, ...], node_id: int = 1, node_count: int = 1) -> None:
        self.node_id = node_id
        self.node_count = node_count
        self.name = node_name(node_id)
        self.kafka_dir = state_dir / self.name
        self.kafka_libs = kafka_libs
        self.kafka_version = kafka_version
        self.identity = identity
        self.message_max_bytes = message_max_bytes
        self.kafka_heap = kafka_heap
        self.sasl = sasl
        self.authorizer = authorizer
        self.super_users = super_users
        self.process = Service(state_dir, self.name, marker=str(self.properties_file))

    @property
    def data_dir(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def properties_file(self) -> Path:
        return self.kafka_dir / "server.properties"

    def port(self, identity: dict[str, Any], base: str = "kafka_port") -> int:
        return int(identity[node_port_key(base, self.node_id)])

    def address(self, identity: dict[str, Any]) -> str:
        return f"127.0.0.1:{self.port(identity)}"

    @property
    def sasl_bootstrap(self) -> str | None:
        """``127.0.0.1:<port>`` of the SASL listener, or None when the broker has none."""
        if not self.sasl:
            return None
        identity = self.identity.load()
        key = node_port_key("sasl_port", self.node_id)
        return f"127.0.0.1:{identity[key]}" if key in identity else None

    def port_keys(self, identity: dict[str, Any]) -> tuple[str, ...]:
        """The identity keys of the ports this node binds (the SASL one once it has been picked)."""
        bases = ("kafka_port", "controller_port") + (("sasl_port",) if self.sasl else ())
        return tuple(key for key in (node_port_key(b, self.node_id) for b in bases) if key in identity)

    def start(self, timeout_s: float = 120.0, keep_ports: bool = True) -> int:
        """Start this node alone and wait until it serves every partition (see :meth:`launch`)."""
        pid = self.process.running()
        if pid is not None:
            return pid
        identity = self.identity.load()
        self.identity.claim_ports(identity, self.port_keys(identity), keep=keep_ports, service="Kafka")
        pid = self.launch(identity)
        self.wait_ready(pid, timeout_s)
        return pid

    def launch(self, identity: dict[str, Any]) -> int:
        """Write the configuration, format storage on first start, spawn the node; don't wait.

        The jars must be fetched and every node's ports be in ``identity``
        (claimed by the caller): a cluster's nodes must all be launched before
        any of them can be ready, since the controllers need a quorum.
        """
        self._write_config(identity)
        if not (self.data_dir / "meta.properties").exists():
            log.info("formatting Kafka storage in %s", self.data_dir)
            run_logged(
                self._java_cmd("kafka.tools.StorageTool", "format", "--cluster-id", identity["cluster_id"],
                               "--config", str(self.properties_file), "--ignore-formatted"),
                "kafka storage format",
            )
        log.info("starting Kafka %s node %d on %s", self.kafka_version, self.node_id, self.address(identity))
        return self.process.spawn(self._java_cmd("kafka.Kafka", str(self.properties_file)))

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (controlled shutdown on SIGTERM), keeping its data and port."""
        return self.process.stop(timeout_s)

    def add_scram_user(self, name: str, password: str, mechanism: str = "SCRAM-SHA-256",
                       timeout_s: float = 30.0) -> None:
        """Create or update a SCRAM user through the admin API, so no password is on a command line."""
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        from lineguard.config import KafkaConfig
        from lineguard.kafka import admin_client

        if self.process.running() is None:
            raise StackError("add_scram_user needs a running broker")
        mech = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}[mechanism]
        admin = admin_client(KafkaConfig(bootstrap_servers=self.address(self.identity.load())))
        upsert = UserScramCredentialUpsertion(name, ScramCredentialInfo(mech, 8192), password.encode())
        for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout_s).values():
            future.result(timeout=timeout_s)

    def wait_ready(self, pid: int, timeout_s: float) -> None:
        """Wait until the node serves every partition and, in a cluster, is back in each ISR it belongs to."""
        from lineguard.config import KafkaConfig
        from lineguard.kafka import admin_client

        port = self.port(self.identity.load())
        deadline = time.monotonic() + timeout_s
        quiet = logging.getLogger("lineguard.stack.librdkafka")
        quiet.setLevel(logging.CRITICAL)  # connection refused while the broker boots is expected
        while time.monotonic() < deadline:
            if self.process.died(pid):
                raise self.process.exited_during_startup(f"Kafka node {self.node_id}")
            if tcp_open(port):
                admin = admin_client(KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}"), logger=quiet,
                                     **{"reconnect.backoff.max.ms": 200})
                with contextlib.suppress(Exception):
                    if _partitions_online(admin, self.node_id if self.node_count > 1 else None):
                        return
            time.sleep(0.2)
        raise StackError(f"Kafka node {self.node_id} was not ready on 127.0.0.1:{port} within {timeout_s:.0f}s; "
                         f"see {self.process.log_file}")

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            require_tool("java", f"install {JAVA_HINT}"),
            f"-Xmx{self.kafka_heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            # C1 only: the broker starts in about half the time on 2 cores (JIT work is most
            # of startup); a test/dev broker never runs long enough to repay C2.
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.xml'}",
            "-cp", f"{self.kafka_libs}/*", main_class, *args,
        ]

    def _write_config(self, identity: dict[str, Any]) -> None:
        broker_max = self.message_max_bytes + BROKER_HEADROOM_BYTES
        kafka_port, controller_port = self.port(identity), self.port(identity, "controller_port")
        voters = ",".join(f"{n}@127.0.0.1:{identity[node_port_key('controller_port', n)]}"
                          for n in range(1, self.node_count + 1))
        # Internal topics get as many replicas as the cluster allows, up to 3, and need 2 in sync from 3 on.
        replicas = str(min(3, self.node_count))
        min_isr = str(min(2, self.node_count))
        properties: dict[str, str] = {
            # KRaft, every node both broker and controller; static voters, so ports may change between runs.
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Images: every size limit above the largest frame (+ headroom for batch framing).
            "message.max.bytes": str(broker_max),
            "replica.fetch.max.bytes": str(broker_max),
            "fetch.max.bytes": str(max(57_671_680, broker_max + MiB)),
            "socket.request.max.bytes": str(max(104_857_600, broker_max + 2 * MiB)),
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "min.insync.replicas": min_isr,
            "default.replication.factor": replicas,
            # Tests and the demo start consumers often: no 3 s wait for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are made on purpose by lineguard.kafka.ensure_topics, with the right limits.
            "auto.create.topics.enable": "false",
            # A small machine: few threads, a small cleaner buffer for the small heap.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(16 * MiB),
        }
        if self.sasl:
            properties.update(self._sasl_properties(identity))
        if self.authorizer:
            properties.update(self._authorizer_properties())
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(
            "# Generated by lineguard.deploy.broker on every start; edits are overwritten.\n"
            + "".join(f"{k}={v}\n" for k, v in properties.items())
        )
        (self.kafka_dir / "log4j2.xml").write_text(_KAFKA_LOG4J2)

    def _sasl_properties(self, identity: dict[str, Any]) -> dict[str, str]:
        """A SASL_PLAINTEXT listener with SCRAM; credentials live in the cluster metadata (KRaft)."""
        port = self.identity.add_port(identity, node_port_key("sasl_port", self.node_id))
        kafka_port, controller_port = self.port(identity), self.port(identity, "controller_port")
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{kafka_port},SASL_PLAINTEXT://127.0.0.1:{port},"
                         f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{kafka_port},SASL_PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
                                              "CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
            # The broker only verifies SCRAM clients: an empty JAAS entry per mechanism.
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram,
        }

    def _authorizer_properties(self) -> dict[str, str]:
        supers = ["User:ANONYMOUS", *(f"User:{name}" for name in self.super_users)]
        return {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The plaintext and controller listeners (loopback only) administer the stack.
            "super.users": ";".join(supers),
            "allow.everyone.if.no.acl.found": "false",
        }


def _partitions_online(admin: Any, node_id: int | None = None) -> bool:
    """True when the broker answers metadata and every partition is served.

    After a restart the broker answers metadata before it has reloaded its
    partitions (ListOffsets then fails with NOT_LEADER_FOR_PARTITION), so
    readiness asks for the end offset of every partition, in one request.
    In a cluster (``node_id`` given) the node must also be registered and back
    in the ISR of every partition it replicates: a rolling restart that moved
    on earlier would leave partitions below ``min.insync.replicas``.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    metadata = admin.list_topics(timeout=2)
    if not metadata.brokers:
        return False
    if node_id is not None:
        if node_id not in metadata.brokers:
            return False
        for topic in metadata.topics.values():
            for partition in topic.partitions.values():
                if node_id in partition.replicas and node_id not in partition.isrs:
                    return False
    partitions = {TopicPartition(name, p): OffsetSpec.latest()
                  for name, topic in metadata.topics.items() for p in topic.partitions}
    if not partitions:
        return True
    for future in admin.list_offsets(partitions, request_timeout=5).values():
        try:
            future.result(timeout=10)  # raises while the partition is not served yet
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            exc.__traceback__ = None  # the future keeps it: don't let it pin this frame and client
            return False
    return True


_KAFKA_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by lineguard.deploy.broker. Everything goes to stdout, which the stack appends to logs/kafka.log. -->
<Configuration status="warn" name="lineguard-kafka">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
  </Loggers>
</Configuration>
"""
