"""The local stack: a single-node Kafka broker and an S3 server, run as plain processes (no Docker).

Kafka is assembled from Maven Central (``deploy/kafka/pom.xml``) into
``<cache>/kafka-<version>/libs`` and runs in KRaft mode (one process that is
both broker and controller). The S3 server is versitygw, built with
``go install`` into ``<cache>/versitygw-<version>/``, serving a posix folder.

Everything a stack owns lives in its state dir::

    <state_dir>/stack.json           addresses + credentials while it runs (read by lineguard.config)
    <state_dir>/stack-identity.json  ports, cluster id and keys, kept across down/up
    <state_dir>/kafka/               server.properties, log4j2.xml, data/
    <state_dir>/s3/                  buckets (one folder each); s3-meta/ if the fs lacks user xattrs
    <state_dir>/logs/                kafka.log, s3.log
    <state_dir>/run/                 pid files

Processes are started detached (own session, re-parented away from the caller)
so they outlive ``lineguard stack up`` and never become zombies of a
long-running caller such as pytest.

Run ``python -m lineguard.deploy.stack fetch`` to download/build without starting.

Security (off by default, so the default stack is unchanged): ``sasl=True``
adds a ``SASL_PLAINTEXT`` listener (SCRAM-SHA-256/512) beside the plaintext
one, and ``authorizer=True`` turns on KRaft's ``StandardAuthorizer``, with the
plaintext and controller listeners' principal (``User:ANONYMOUS``) as super
user, so the stack still administers itself while SASL clients get only what
ACLs grant them. SCRAM users are added to the running broker with
:meth:`LocalStack.add_scram_user` (through the admin API, so no password is
ever on a command line).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lineguard.stack")

MiB = 1024 * 1024
POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
KAFKA_MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+
# The broker accepts this much more than the configured message size: topic limits
# (lineguard.kafka_admin) add batch framing on top of message_max_bytes and must fit.
BROKER_HEADROOM_BYTES = 1 * MiB


class StackError(RuntimeError):
    """A readable reason why the stack cannot be fetched, started or stopped."""


@dataclass(frozen=True)
class FetchTimes:
    kafka_s: float
    versitygw_s: float | None


# --------------------------------------------------------------------------- processes


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _process_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs, is not a zombie, and its command line contains ``marker``.

    The marker (a path inside the state dir) guards against a recycled pid: we
    never signal a process that is not ours.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # Field 3 of /proc/<pid>/stat is the state; the command name before it is in parentheses.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def _spawn_detached(cmd: list[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session, orphaned from us, output appended to ``log_file``.

    A throwaway ``sh`` starts the command in the background, writes its pid and
    exits, so the command is re-parented to init and can't linger as our zombie.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.unlink(missing_ok=True)
    _rotate(log_file)
    with log_file.open("ab") as out:
        out.write(f"\n===== lineguard stack: starting at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        out.flush()
        launcher = 'pid_file=$1; shift; "$@" & echo $! > "$pid_file"'
        subprocess.run(
            ["/bin/sh", "-c", launcher, "sh", str(pid_file), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            check=True,
        )
    pid = _read_pid(pid_file)
    if pid is None:
        raise StackError(f"could not start {cmd[0]}: no pid written to {pid_file}")
    return pid


def _rotate(log_file: Path, max_bytes: int = 64 * MiB) -> None:
    if log_file.exists() and log_file.stat().st_size > max_bytes:
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the service's process group (its own session), never the caller's."""
    with contextlib.suppress(ProcessLookupError):
        group = os.getpgid(pid)
        if group == os.getpgrp():
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)


def _stop_process(name: str, pid_file: Path, marker: str, timeout_s: float) -> bool:
    """SIGTERM the process (group), SIGKILL after ``timeout_s``; True if one was running."""
    pid = _read_pid(pid_file)
    if pid is None or not _process_alive(pid, marker):
        pid_file.unlink(missing_ok=True)
        return False
    log.info("stopping %s (pid %d)", name, pid)
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _process_alive(pid, marker):
        if time.monotonic() > deadline:
            log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", name, pid, timeout_s)
            _signal_group(pid, signal.SIGKILL)
            _wait_until(lambda: not _process_alive(pid, marker), 10, f"{name} to die after SIGKILL")
            break
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def _wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as servers set it, so a port in TIME_WAIT after a restart counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialize fetches/ups that share a folder (several engineers or test sessions at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in base64url, never starting with '-'.

    An id starting with '-' reads as an option to the storage tool's parser;
    Kafka's own Uuid.randomUuid() avoids those for the same reason.
    """
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _partitions_online(admin: Any) -> bool:
    """True when the broker answers metadata and serves every partition it leads.

    After a restart the broker answers metadata before it has reloaded its
    partitions (ListOffsets then fails with NOT_LEADER_FOR_PARTITION), so
    readiness asks for the end offset of every partition, in one request.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    metadata = admin.list_topics(timeout=2)
    if not metadata.brokers:
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


# --------------------------------------------------------------------------- tools


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` not found on PATH: {hint}")
    return path


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"cannot read the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" style means 8


def _run_logged(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
        raise StackError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(output))


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """A Kafka broker and an S3 server for one state dir; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        kafka_version: str = "4.1.1",
        versitygw_version: str = "v1.7.0",
        message_max_bytes: int = 16 * MiB,
        kafka_heap: str = "512m",
        sasl: bool = False,
        authorizer: bool = False,
        super_users: tuple[str, ...] = (),
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

    @classmethod
    def from_settings(cls, settings: Any) -> LocalStack:
        """Build from ``lineguard.config.Settings`` (typed loosely so this module imports no pydantic)."""
        return cls(
            state_dir=settings.state_dir,
            cache_dir=settings.stack.cache_dir,
            kafka_version=settings.stack.kafka_version,
            versitygw_version=settings.stack.versitygw_version,
            message_max_bytes=settings.kafka.message_max_bytes,
        )

    # ---- paths

    @property
    def kafka_libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def versitygw_bin(self) -> Path:
        # One folder per version, so a version bump in the settings builds anew.
        return self.cache_dir / f"versitygw-{self.versitygw_version}" / "versitygw"

    @property
    def stack_json(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def identity_json(self) -> Path:
        return self.state_dir / "stack-identity.json"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def s3_root(self) -> Path:
        return self.state_dir / "s3"

    @property
    def s3_sidecar(self) -> Path:
        return self.state_dir / "s3-meta"

    def log_path(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"

    def pid_path(self, service: str) -> Path:
        return self.state_dir / "run" / f"{service}.pid"

    def _marker(self, service: str) -> str:
        # A path only this stack's process of that service has on its command line.
        return str(self.kafka_properties if service == "kafka" else self.s3_root)

    # ---- fetch

    def fetch(self, with_s3: bool = True) -> FetchTimes:
        """Download Kafka's jars and build versitygw where missing; quick when cached."""
        started = time.monotonic()
        self.fetch_kafka()
        kafka_s = time.monotonic() - started
        versitygw_s = None
        if with_s3:
            started = time.monotonic()
            self.fetch_versitygw()
            versitygw_s = time.monotonic() - started
        return FetchTimes(kafka_s, versitygw_s)

    def fetch_kafka(self) -> Path:
        done_marker = self.kafka_libs / ".complete"
        if done_marker.exists():
            return self.kafka_libs
        mvn = _require_tool("mvn", "install Maven 3 (e.g. `apt-get install maven`) to fetch Kafka from Maven Central")
        with _file_lock(self.cache_dir / ".fetch-kafka.lock"):
            if done_marker.exists():  # another process fetched it while we waited
                return self.kafka_libs
            log.info("fetching Kafka %s from Maven Central into %s", self.kafka_version, self.kafka_libs)
            staging = self.kafka_libs.with_name("libs.partial")
            shutil.rmtree(staging, ignore_errors=True)
            _run_logged(
                [
                    mvn, "-q", "-B", "-f", str(POM_PATH), "dependency:copy-dependencies",
                    f"-Dkafka.version={self.kafka_version}", f"-DoutputDirectory={staging}",
                ],
                f"mvn fetching kafka_2.13:{self.kafka_version}",
            )
            if not (staging / f"kafka_2.13-{self.kafka_version}.jar").exists():
                raise StackError(f"mvn finished but {staging} holds no kafka_2.13-{self.kafka_version}.jar")
            shutil.rmtree(self.kafka_libs, ignore_errors=True)
            staging.rename(self.kafka_libs)
            done_marker.touch()
        return self.kafka_libs

    def fetch_versitygw(self) -> Path:
        if self.versitygw_bin.exists():
            return self.versitygw_bin
        go = _require_tool("go", "install Go >= 1.24 to build the versitygw S3 server (or use --no-s3)")
        with _file_lock(self.cache_dir / ".fetch-versitygw.lock"):
            if self.versitygw_bin.exists():
                return self.versitygw_bin
            log.info("building versitygw %s with go install (a few minutes the first time)", self.versitygw_version)
            gobin = self.versitygw_bin.parent
            gobin.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "GOBIN": str(gobin), "GOFLAGS": "-buildvcs=false"}
            # Run outside any Go module so `go install pkg@version` ignores a go.mod in the cwd.
            _run_logged([go, "install", f"{VERSITYGW_MODULE}@{self.versitygw_version}"],
                        "go install versitygw", env=env, cwd=self.cache_dir)
        return self.versitygw_bin

    # ---- identity (ports, cluster id, keys), kept across down/up

    def _identity(self) -> dict[str, Any]:
        if self.identity_json.exists():
            return json.loads(self.identity_json.read_text())
        identity = {
            "cluster_id": _new_cluster_id(),
            "kafka_port": _free_port(),
            "controller_port": _free_port(),
            "s3_port": _free_port(),
            "s3_access_key": "lg" + secrets.token_hex(9),
            "s3_secret_key": secrets.token_urlsafe(30),
        }
        self._save_identity(identity)
        return identity

    def _save_identity(self, identity: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.identity_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity, indent=2))
        tmp.chmod(0o600)  # holds the S3 secret
        tmp.replace(self.identity_json)

    def _claim_ports(self, identity: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Keep the remembered ports where free (addresses stay stable); pick new ones where taken."""
        changed = False
        for key in keys:
            if not _port_free(identity[key]):
                identity[key] = _free_port()
                changed = True
        if changed:
            self._save_identity(identity)

    # ---- running?

    def running(self, service: str) -> int | None:
        """The pid of the stack's ``kafka`` or ``s3`` process, or None."""
        pid = _read_pid(self.pid_path(service))
        if pid is not None and _process_alive(pid, self._marker(service)):
            return pid
        return None

    # ---- kafka

    def _write_kafka_config(self, identity: dict[str, Any]) -> None:
        broker_max = self.message_max_bytes + BROKER_HEADROOM_BYTES
        properties: dict[str, str] = {
            # KRaft, one node that is broker and controller; static voters, so ports may change between runs.
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{identity['controller_port']}",
            "listeners": f"PLAINTEXT://127.0.0.1:{identity['kafka_port']},"
                         f"CONTROLLER://127.0.0.1:{identity['controller_port']}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{identity['kafka_port']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.kafka_data),
            # Images: every size limit above the largest frame (+ headroom for batch framing).
            "message.max.bytes": str(broker_max),
            "replica.fetch.max.bytes": str(broker_max),
            "fetch.max.bytes": str(max(57_671_680, broker_max + MiB)),
            "socket.request.max.bytes": str(max(104_857_600, broker_max + 2 * MiB)),
            # One node: internal topics can't have more replicas than that.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "default.replication.factor": "1",
            # Tests and the demo start consumers often: no 3 s wait for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are made on purpose by lineguard.kafka_admin.ensure_topics, with the right limits.
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
        self.kafka_properties.write_text(
            "# Generated by lineguard.deploy.stack on every start; edits are overwritten.\n"
            + "".join(f"{k}={v}\n" for k, v in properties.items())
        )
        (self.kafka_dir / "log4j2.xml").write_text(_KAFKA_LOG4J2)

    def _sasl_properties(self, identity: dict[str, Any]) -> dict[str, str]:
        """A SASL_PLAINTEXT listener with SCRAM; credentials live in the cluster metadata (KRaft)."""
        if "sasl_port" not in identity:
            identity["sasl_port"] = _free_port()
            self._save_identity(identity)
        port = identity["sasl_port"]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{identity['kafka_port']},"
                         f"SASL_PLAINTEXT://127.0.0.1:{port},"
                         f"CONTROLLER://127.0.0.1:{identity['controller_port']}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{identity['kafka_port']},"
                                    f"SASL_PLAINTEXT://127.0.0.1:{port}",
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

    @property
    def sasl_bootstrap(self) -> str | None:
        """``127.0.0.1:<port>`` of the SASL listener, or None when the stack has none."""
        if not self.sasl:
            return None
        return f"127.0.0.1:{self._identity()['sasl_port']}" if "sasl_port" in self._identity() else None

    def add_scram_user(self, name: str, password: str, mechanism: str = "SCRAM-SHA-256",
                       timeout_s: float = 30.0) -> None:
        """Create or update a SCRAM user on the running broker (through the plaintext listener)."""
        from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                           UserScramCredentialUpsertion)

        if self.running("kafka") is None:
            raise StackError("add_scram_user needs a running broker")
        mech = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}[mechanism]
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self._identity()['kafka_port']}"})
        upsert = UserScramCredentialUpsertion(name, ScramCredentialInfo(mech, 8192), password.encode())
        for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout_s).values():
            future.result(timeout=timeout_s)

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            _require_tool("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"),
            f"-Xmx{self.kafka_heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            # C1 only: the broker starts in about half the time on 2 cores (JIT work is most
            # of startup); a test/dev broker never runs long enough to repay C2.
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.xml'}",
            "-cp", f"{self.kafka_libs}/*", main_class, *args,
        ]

    def start_kafka(self, timeout_s: float = 120.0, keep_ports: bool = True) -> int:
        """Start the broker (formatting storage on first start) and wait until it answers.

        ``keep_ports`` (the default, used by restarts) insists on the remembered
        port so clients reconnect to the same address; ``up`` passes False to
        move to a free port when the old one is taken.
        """
        pid = self.running("kafka")
        if pid is not None:
            return pid
        self.check_prerequisites(with_s3=False)
        self.fetch_kafka()
        identity = self._identity()
        port_keys = ("kafka_port", "controller_port") + (("sasl_port",) if self.sasl and "sasl_port" in identity else ())
        if keep_ports:
            for key in port_keys:
                if not _port_free(identity[key]):
                    raise StackError(f"cannot restart Kafka: port {identity[key]} ({key}) is taken by another process")
        else:
            self._claim_ports(identity, port_keys)
        self._write_kafka_config(identity)
        if not (self.kafka_data / "meta.properties").exists():
            log.info("formatting Kafka storage in %s", self.kafka_data)
            _run_logged(
                self._java_cmd("kafka.tools.StorageTool", "format", "--cluster-id", identity["cluster_id"],
                               "--config", str(self.kafka_properties), "--ignore-formatted"),
                "kafka storage format",
            )
        log.info("starting Kafka %s on 127.0.0.1:%d", self.kafka_version, identity["kafka_port"])
        pid = _spawn_detached(self._java_cmd("kafka.Kafka", str(self.kafka_properties)),
                              self.log_path("kafka"), self.pid_path("kafka"))
        self._wait_kafka(pid, identity["kafka_port"], timeout_s)
        self._update_stack_json()
        return pid

    def _wait_kafka(self, pid: int, port: int, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        quiet = logging.getLogger("lineguard.stack.librdkafka")
        quiet.setLevel(logging.CRITICAL)  # connection refused while the broker boots is expected
        while time.monotonic() < deadline:
            if not _process_alive(pid, self._marker("kafka")):
                raise StackError(f"Kafka exited during startup; last lines of {self.log_path('kafka')}:\n"
                                 + _log_tail(self.log_path("kafka")))
            if _tcp_open(port):
                admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "logger": quiet,
                                     "reconnect.backoff.max.ms": 200})
                with contextlib.suppress(Exception):
                    if _partitions_online(admin):
                        return
            time.sleep(0.2)
        raise StackError(f"Kafka did not answer on 127.0.0.1:{port} within {timeout_s:.0f}s; see {self.log_path('kafka')}")

    def stop_kafka(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (controlled shutdown on SIGTERM), keeping its data and port."""
        stopped = _stop_process("kafka", self.pid_path("kafka"), self._marker("kafka"), timeout_s)
        self._update_stack_json()
        return stopped

    def restart_kafka(self) -> int:
        self.stop_kafka()
        return self.start_kafka(keep_ports=True)

    # ---- s3

    def _xattrs_supported(self) -> bool:
        probe = self.s3_root / ".xattr-probe"
        probe.touch()
        try:
            os.setxattr(probe, "user.lineguard.probe", b"1")
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                return False
            raise
        finally:
            probe.unlink(missing_ok=True)

    def start_s3(self, timeout_s: float = 60.0, keep_ports: bool = True) -> int:
        pid = self.running("s3")
        if pid is not None:
            return pid
        binary = self.fetch_versitygw()
        identity = self._identity()
        if keep_ports:
            if not _port_free(identity["s3_port"]):
                raise StackError(f"cannot start S3: port {identity['s3_port']} is taken by another process")
        else:
            self._claim_ports(identity, ("s3_port",))
        self.s3_root.mkdir(parents=True, exist_ok=True)
        backend = ["posix"]
        if not self._xattrs_supported():
            # versitygw keeps object metadata (etag, content type) in user xattrs; without
            # them on this filesystem, a sidecar folder holds it instead.
            self.s3_sidecar.mkdir(parents=True, exist_ok=True)
            backend += ["--sidecar", str(self.s3_sidecar)]
        # Credentials through the environment, so they don't show in `ps`.
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": identity["s3_access_key"],
               "ROOT_SECRET_ACCESS_KEY": identity["s3_secret_key"]}
        cmd = [str(binary), "--port", f"127.0.0.1:{identity['s3_port']}", "--quiet", *backend, str(self.s3_root)]
        log.info("starting versitygw %s on 127.0.0.1:%d", self.versitygw_version, identity["s3_port"])
        pid = _spawn_detached(cmd, self.log_path("s3"), self.pid_path("s3"), env=env)
        self._wait_s3(pid, identity, timeout_s)
        self._update_stack_json()
        return pid

    def _wait_s3(self, pid: int, identity: dict[str, Any], timeout_s: float) -> None:
        import urllib3
        from minio import Minio

        # No retries or long timeouts inside the probe: this loop is the retry.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=3), retries=False)
        client = Minio(f"127.0.0.1:{identity['s3_port']}", access_key=identity["s3_access_key"],
                       secret_key=identity["s3_secret_key"], secure=False, http_client=http)
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not _process_alive(pid, self._marker("s3")):
                raise StackError(f"versitygw exited during startup; last lines of {self.log_path('s3')}:\n"
                                 + _log_tail(self.log_path("s3")))
            if _tcp_open(identity["s3_port"]):
                try:
                    client.list_buckets()
                    return
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error = exc
            time.sleep(0.2)
        raise StackError(f"S3 did not answer on 127.0.0.1:{identity['s3_port']} within {timeout_s:.0f}s"
                         f" (last error: {last_error}); see {self.log_path('s3')}")

    def stop_s3(self, timeout_s: float = 15.0) -> bool:
        stopped = _stop_process("s3", self.pid_path("s3"), self._marker("s3"), timeout_s)
        self._update_stack_json()
        return stopped

    # ---- the whole stack

    def check_prerequisites(self, with_s3: bool = True) -> None:
        """Raise one StackError naming every missing tool, before any slow step starts."""
        needed = {"java": "a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"}
        if not (self.kafka_libs / ".complete").exists():
            needed["mvn"] = "Maven 3, to fetch Kafka from Maven Central (e.g. `apt-get install maven`)"
        if with_s3 and not self.versitygw_bin.exists():
            needed["go"] = "Go >= 1.24, to build the versitygw S3 server (or start with --no-s3)"
        missing = [f"`{tool}` not found on PATH: install {hint}" for tool, hint in needed.items()
                   if shutil.which(tool) is None]
        if missing:
            raise StackError("cannot start the local stack:\n  " + "\n  ".join(missing))
        java_major = _java_major(shutil.which("java") or "java")
        if java_major < KAFKA_MIN_JAVA:
            raise StackError(f"Kafka {self.kafka_version} needs Java {KAFKA_MIN_JAVA}+, found Java {java_major}")

    def up(self, with_s3: bool = True) -> dict[str, Any]:
        """Fetch what's missing, start what's not running, wait for both; return stack.json's content."""
        self.check_prerequisites(with_s3)
        with _file_lock(self.state_dir / "run" / "stack.lock"):
            self.fetch(with_s3=with_s3)
            self.start_kafka(keep_ports=False)
            if with_s3:
                self.start_s3(keep_ports=False)
            return self._update_stack_json()

    def down(self, purge: bool = False) -> None:
        """Stop both processes and remove stack.json; ``purge`` also deletes topics, buckets and logs."""
        with _file_lock(self.state_dir / "run" / "stack.lock"):
            # SIGTERM both first so their shutdowns overlap.
            for service in ("s3", "kafka"):
                pid = self.running(service)
                if pid is not None:
                    _signal_group(pid, signal.SIGTERM)
            _stop_process("s3", self.pid_path("s3"), self._marker("s3"), 15.0)
            _stop_process("kafka", self.pid_path("kafka"), self._marker("kafka"), 30.0)
            self.stack_json.unlink(missing_ok=True)
            if purge:
                for path in (self.kafka_dir, self.s3_root, self.s3_sidecar, self.state_dir / "logs",
                             self.identity_json):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """What runs where: {service: {running, pid, address, log}} plus the state dir."""
        identity = json.loads(self.identity_json.read_text()) if self.identity_json.exists() else {}
        out: dict[str, Any] = {"state_dir": str(self.state_dir)}
        for service, port_key in (("kafka", "kafka_port"), ("s3", "s3_port")):
            pid = self.running(service)
            port = identity.get(port_key)
            out[service] = {
                "running": pid is not None,
                "pid": pid,
                "address": f"127.0.0.1:{port}" if port else None,
                "log": str(self.log_path(service)),
            }
        return out

    def _update_stack_json(self) -> dict[str, Any]:
        """Rewrite stack.json from what runs now; remove it when nothing does."""
        kafka_pid, s3_pid = self.running("kafka"), self.running("s3")
        if kafka_pid is None and s3_pid is None and not self.stack_json.exists():
            return {}  # no stack was up: nothing to describe
        identity = self._identity()
        info: dict[str, Any] = {
            # The broker's address stays in the file while it restarts: clients keep retrying it.
            "kafka_bootstrap": f"127.0.0.1:{identity['kafka_port']}",
            "kafka_message_max_bytes": self.message_max_bytes,
            "pids": {},
            "logs": {"kafka": str(self.log_path("kafka"))},
        }
        if self.sasl and "sasl_port" in identity:
            info["kafka_sasl_bootstrap"] = f"127.0.0.1:{identity['sasl_port']}"
        if kafka_pid is not None:
            info["pids"]["kafka"] = kafka_pid
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


_KAFKA_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by lineguard.deploy.stack. Everything goes to stdout, which the stack appends to logs/kafka.log. -->
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


def main(argv: list[str] | None = None) -> int:
    """``python -m lineguard.deploy.stack fetch|up|down|status``: the stack without the full CLI (for make)."""
    from lineguard.deploy.cli import build_standalone_parser

    from lineguard.config import ConfigError, load_settings
    from lineguard.logs import setup_logging

    args = build_standalone_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"lineguard: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return int(args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())
