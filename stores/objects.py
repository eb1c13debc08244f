"""The object store: bytes under a key, in a local folder or an S3 bucket (via minio).

Heatmap keys look like ``<line>/<yyyy>/<mm>/<dd>/<frame_id>.png``; writing the same key
twice stores the same bytes again, so replays are harmless. Keys reach the store from
the wire or from an HTTP path, so :func:`check_key` refuses any key that could escape
the store's root (``..``, absolute, backslashes) or that is not under its own line.
"""

from __future__ import annotations

import abc
import io
import os
import re
import tempfile
from pathlib import Path

from lineguard.config import Settings
from lineguard.logs import get_logger
from lineguard.schemas import Reason, SchemaError

log = get_logger(__name__)

_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_key(key: str, line_id: str) -> str:
    """Raise SchemaError unless ``key`` is a plain relative path under ``<line_id>/``."""
    parts = key.split("/")
    if (
        len(key) > 1024
        or len(parts) < 2
        or parts[0] != line_id
        or any(part in (".", "..") or not _KEY_PART.match(part) for part in parts)
    ):
        raise SchemaError(Reason.INVALID_FIELD, f"Heatmap: unsafe or foreign object key {key!r} for line {line_id!r}")
    return key


class ObjectStore(abc.ABC):
    """Somewhere to put bytes under a key."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""

    @abc.abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a folder-like ``a/b/``), sorted."""

    def close(self) -> None:
        """Release connections (nothing to do for most stores)."""


class LocalFolderStore(ObjectStore):
    """Files under ``root``; each written to a temporary name and renamed, so readers never
    see half a PNG. Not fsynced: a power cut may lose the last seconds of heatmaps."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):  # defence in depth behind check_key
            raise ValueError(f"key {key!r} escapes {self.root}")
        return path

    def get(self, key: str) -> bytes | None:
        path = self.path_of(key)
        return path.read_bytes() if path.is_file() else None

    def keys(self, prefix: str) -> list[str]:
        top = self.path_of(prefix) if prefix.strip("/") else self.root
        if not top.is_dir():
            return []
        # Dot-files are the temporary names of writes in progress.
        return sorted(p.relative_to(self.root).as_posix() for p in top.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is an atomic rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class S3Store(ObjectStore):
    """An S3-compatible bucket through the minio client. Keys are never logged with secrets:
    only the endpoint and bucket appear in messages."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
    ) -> None:
        import certifi
        import urllib3
        from minio import Minio  # only when used

        # minio wants host:port; accept a URL too (the stack writes one).
        secure = secure or endpoint.startswith("https://")
        endpoint = re.sub(r"^https?://", "", endpoint).rstrip("/")
        self.endpoint, self.bucket = endpoint, bucket
        # Fail fast: the heatmap sink retries with bounded, jittered backoff (and reports its
        # lag meanwhile); minio's default client would retry 5 times with growing sleeps
        # inside one write, hiding an outage from the sink for many seconds.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region, http_client=http)
        self._ensure_bucket(region)

    def _ensure_bucket(self, region: str | None) -> None:
        from minio.error import S3Error

        if self.client.bucket_exists(self.bucket):
            return
        try:
            if region:
                self.client.make_bucket(self.bucket, location=region)
            else:
                self.client.make_bucket(self.bucket)
            log.info("created bucket %s on %s", self.bucket, self.endpoint)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise  # another sink creating it at the same moment is fine

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), length=len(data),
                               content_type=content_type)

    def get(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def keys(self, prefix: str) -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r})"


def open_object_store(settings: Settings) -> ObjectStore:
    """The store the settings select (``sinks.object_store.backend``)."""
    cfg = settings.sinks.object_store
    if cfg.backend == "local":
        return LocalFolderStore(settings.heatmap_dir)
    access_key, secret_key = cfg.credentials()
    return S3Store(cfg.endpoint, access_key, secret_key, cfg.bucket, secure=cfg.secure, region=cfg.region)
