"""The local stack: a single-node Kafka broker and an S3 server, run as plain processes (no Docker).

``LocalStack`` is the facade the CLI, the demo, benchmarks and tests use; the
jobs behind it each have a room: ``fetch`` (Kafka's jars, the versitygw
build), ``broker`` (Kafka's configuration and lifecycle), ``s3server``
(versitygw's lifecycle), ``processes`` (detached start, pid files, stop) and
``identity`` (ports and keys kept across down/up).

Everything a stack owns lives in its state dir::

    <state_dir>/stack.json           addresses + credentials while it runs (read by lineguard.config)
    <state_dir>/stack-identity.json  ports, cluster id and keys, kept across down/up
    <state_dir>/kafka/               server.properties, log4j2.xml, data/
    <state_dir>/s3/                  buckets (one folder each); s3-meta/ if the fs lacks user xattrs
    <state_dir>/logs/                kafka.log, s3.log
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

from .broker import KafkaBroker
from .fetch import Downloads, FetchTimes
from .identity import StackIdentity
from .processes import Service, StackError, file_lock
from .s3server import S3Server

__all__ = ["FetchTimes", "LocalStack", "StackError"]

# The settings model is the one source of the stack's defaults.
_STACK_DEFAULTS = StackConfig()
_DEFAULT_MESSAGE_MAX_BYTES: int = KafkaConfig.model_fields["message_max_bytes"].default


class LocalStack:
    """A Kafka broker and an S3 server for one state dir; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        kafka_version: str = _STACK_DEFAULTS.kafka_version,
        versitygw_version: str = _STACK_DEFAULTS.versitygw_version,
        message_max_bytes: int = _DEFAULT_MESSAGE_MAX_BYTES,
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
        )

    # ---- the parts, built from the current options (callers may change them, e.g. message_max_bytes)

    @property
    def downloads(self) -> Downloads:
        return Downloads(self.cache_dir, self.kafka_version, self.versitygw_version)

    @property
    def broker(self) -> KafkaBroker:
        return KafkaBroker(self.state_dir, self.downloads.kafka_libs, self.kafka_version, self._identity,
                           message_max_bytes=self.message_max_bytes, kafka_heap=self.kafka_heap,
                           sasl=self.sasl, authorizer=self.authorizer, super_users=self.super_users)

    @property
    def s3(self) -> S3Server:
        return S3Server(self.state_dir, self.versitygw_version, self._identity)

    def _process(self, service: str) -> Service:
        if service not in ("kafka", "s3"):
            raise ValueError(f"unknown service {service!r}: expected 'kafka' or 's3'")
        return self.broker.process if service == "kafka" else self.s3.process

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
        """The pid of the stack's ``kafka`` or ``s3`` process, or None."""
        return self._process(service).running()

    def start_kafka(self, timeout_s: float = 120.0, keep_ports: bool = True) -> int:
        """Start the broker (fetching it first) and wait until it serves every partition.

        ``keep_ports`` (the default, used by restarts) insists on the remembered
        port so clients reconnect to the same address; ``up`` passes False to
        move to a free port when the old one is taken.
        """
        pid = self.running("kafka")
        if pid is not None:
            return pid
        self.check_prerequisites(with_s3=False)
        self.fetch_kafka()
        pid = self.broker.start(timeout_s, keep_ports=keep_ports)
        self._update_stack_json()
        return pid

    def stop_kafka(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (controlled shutdown on SIGTERM), keeping its data and port."""
        stopped = self.broker.stop(timeout_s)
        self._update_stack_json()
        return stopped

    def restart_kafka(self) -> int:
        self.stop_kafka()
        return self.start_kafka(keep_ports=True)

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
        """Fetch what's missing, start what's not running, wait for both; return stack.json's content."""
        self.check_prerequisites(with_s3)
        with file_lock(self.state_dir / "run" / "stack.lock"):
            self.fetch(with_s3=with_s3)
            self.start_kafka(keep_ports=False)
            if with_s3:
                self.start_s3(keep_ports=False)
            return self._update_stack_json()

    def down(self, purge: bool = False) -> None:
        """Stop both processes and remove stack.json; ``purge`` also deletes topics, buckets and logs."""
        broker, s3 = self.broker, self.s3
        with file_lock(self.state_dir / "run" / "stack.lock"):
            # SIGTERM both first so their shutdowns overlap.
            s3.process.terminate()
            broker.process.terminate()
            s3.stop(15.0)
            broker.stop(30.0)
            self.stack_json.unlink(missing_ok=True)
            if purge:
                for path in (broker.kafka_dir, s3.root, s3.sidecar, self.state_dir / "logs", self._identity.path):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """What runs where: {service: {running, pid, address, log}} plus the state dir."""
        identity = self._identity.load() if self._identity.exists() else {}
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
        identity = self._identity.load()
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
