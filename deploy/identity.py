"""A stack's identity: its ports, KRaft cluster id and S3 keys, kept across down/up.

Stable ports keep clients' addresses valid across restarts; the file holds the
S3 secret, so it is written owner-only.
"""

from __future__ import annotations

import json
import secrets
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

from .processes import StackError, free_port, port_free


class StackIdentity:
    """``<state_dir>/stack-identity.json``, created with fresh free ports on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        if self.path.exists():
            return json.loads(self.path.read_text())
        identity = {
            "cluster_id": _new_cluster_id(),
            "kafka_port": free_port(),
            "controller_port": free_port(),
            "s3_port": free_port(),
            "s3_access_key": "lg" + secrets.token_hex(9),
            "s3_secret_key": secrets.token_urlsafe(30),
        }
        self.save(identity)
        return identity

    def save(self, identity: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity, indent=2))
        tmp.chmod(0o600)  # holds the S3 secret
        tmp.replace(self.path)

    def add_port(self, identity: dict[str, Any], key: str) -> int:
        """The port under ``key``, picking and remembering a free one the first time."""
        if key not in identity:
            identity[key] = free_port()
            self.save(identity)
        return int(identity[key])

    def claim_ports(self, identity: dict[str, Any], keys: tuple[str, ...], keep: bool, service: str) -> None:
        """Make sure the ports under ``keys`` are free to bind.

        ``keep`` (restarts) insists on the remembered ports so clients reconnect
        to the same address; otherwise a taken port is replaced by a free one and
        the others stay, so addresses change only where they must.
        """
        changed = False
        for key in keys:
            if port_free(identity[key]):
                continue
            if keep:
                raise StackError(f"cannot start {service}: port {identity[key]} ({key}) is taken by another process")
            identity[key] = free_port()
            changed = True
        if changed:
            self.save(identity)


def _new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in base64url, never starting with '-'.

    An id starting with '-' reads as an option to the storage tool's parser;
    Kafka's own Uuid.randomUuid() avoids those for the same reason.
    """
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
