"""The stack's S3 server: versitygw serving ``<state_dir>/s3/`` (one folder per bucket)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from .identity import StackIdentity
from .processes import Service, StackError, log, tcp_open


class S3Server:
    """versitygw for one state dir; the root keys come from the stack's identity."""

    def __init__(self, state_dir: Path, versitygw_version: str, identity: StackIdentity) -> None:
        self.root = state_dir / "s3"
        self.sidecar = state_dir / "s3-meta"
        self.versitygw_version = versitygw_version
        self.identity = identity
        self.process = Service(state_dir, "s3", marker=str(self.root))

    def start(self, binary: Path, timeout_s: float = 60.0, keep_ports: bool = True) -> int:
        """Start versitygw from ``binary`` and wait until it lists buckets."""
        pid = self.process.running()
        if pid is not None:
            return pid
        identity = self.identity.load()
        self.identity.claim_ports(identity, ("s3_port",), keep=keep_ports, service="S3")
        self.root.mkdir(parents=True, exist_ok=True)
        backend = ["posix"]
        if not self._xattrs_supported():
            # versitygw keeps object metadata (etag, content type) in user xattrs; without
            # them on this filesystem, a sidecar folder holds it instead.
            self.sidecar.mkdir(parents=True, exist_ok=True)
            backend += ["--sidecar", str(self.sidecar)]
        # Credentials through the environment, so they don't show in `ps`.
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": identity["s3_access_key"],
               "ROOT_SECRET_ACCESS_KEY": identity["s3_secret_key"]}
        cmd = [str(binary), "--port", f"127.0.0.1:{identity['s3_port']}", "--quiet", *backend, str(self.root)]
        log.info("starting versitygw %s on 127.0.0.1:%d", self.versitygw_version, identity["s3_port"])
        pid = self.process.spawn(cmd, env=env)
        self._wait(pid, identity, timeout_s)
        return pid

    def stop(self, timeout_s: float = 15.0) -> bool:
        return self.process.stop(timeout_s)

    def _xattrs_supported(self) -> bool:
        probe = self.root / ".xattr-probe"
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

    def _wait(self, pid: int, identity: dict[str, Any], timeout_s: float) -> None:
        import urllib3
        from minio import Minio

        # No retries or long timeouts inside the probe: this loop is the retry.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=3), retries=False)
        client = Minio(f"127.0.0.1:{identity['s3_port']}", access_key=identity["s3_access_key"],
                       secret_key=identity["s3_secret_key"], secure=False, http_client=http)
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.died(pid):
                raise self.process.exited_during_startup("versitygw")
            if tcp_open(identity["s3_port"]):
                try:
                    client.list_buckets()
                    return
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error = exc
            time.sleep(0.2)
        raise StackError(f"S3 did not answer on 127.0.0.1:{identity['s3_port']} within {timeout_s:.0f}s"
                         f" (last error: {last_error}); see {self.process.log_file}")
