"""Models published once, through the object store: push, list, promote, roll back, and the pull into a host's cache.

Object layout (in the bucket of ``sinks.object_store``)::

    models/<product>/<version>/<file>            every model file, uploaded first
    models/<product>/<version>/checksums.json    {file: sha256} for every file and for the manifest
    models/<product>/<version>/manifest.json     uploaded last: a version without it is incomplete
    models/<product>/promoted.json               {"product": [history], "lines": {line: [history]},
                                                  "shadow": {"product": candidate, "lines": {line: candidate}}}

A host pulls a promoted version into ``<cache>/.versions/<product>/<version>/``, checks every
sha256 against checksums.json and the manifest, and only then points ``<cache>/<product>``
(or ``<cache>/<product>@<line>``) at it by an atomic symlink swap. A shadow candidate
(``lineguard models shadow``) is pulled the same way and pointed at by ``<cache>/.shadow/<product>``
(or ``<cache>/.shadow/<product>@<line>``): the processors score it beside the live model and publish
its verdicts to ``lineguard.shadow.<line>`` only. The cache is then an ordinary
model folder for :class:`~lineguard.inspection.ModelRegistry`, which checks the files again before loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lineguard.engines.manifest import MANIFEST_FILE, ONNX_FILE, Manifest
from lineguard.logs import get_logger
from lineguard.stores import ObjectStore

from .models import SHADOW_DIR, valid_name

log = get_logger(__name__)

PREFIX = "models"
CHECKSUMS_FILE = "checksums.json"
POINTER_FILE = "promoted.json"
VERSIONS_DIR = ".versions"  # in the cache: hidden, so ModelRegistry never takes it for a product


class PublishError(RuntimeError):
    """A push, promote or rollback that cannot be done (bad name, unknown version, nothing to roll back to)."""


class PullRefused(Exception):
    """A promoted version that cannot be pulled as it is (incomplete or corrupted); the cache keeps the old one."""

    def __init__(self, product: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.product, self.reason = product, reason


def _key(*parts: str) -> str:
    return "/".join((PREFIX, *parts))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_names(*names: str | None) -> None:
    for name in names:
        if name is not None and not valid_name(name):
            raise PublishError(f"{name!r} is not a usable product, version or line name "
                               "(letters, digits, '_', '-', '.'; no leading dot)")


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


class ModelStore:
    """The published models in an object store: what ``lineguard models`` works on."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def push(self, model_dir: str | Path, product: str | None = None) -> tuple[str, str]:
        """Upload a model folder as ``models/<product>/<version>/``: files, checksums, then the manifest.

        Versions are immutable: pushing the same version again with other content is refused.
        """
        folder = Path(model_dir)
        manifest = Manifest.load(folder)
        product = product or manifest.name
        _check_names(product, manifest.version)
        manifest.verify(folder)  # never publish a folder that is itself half-copied
        digests = manifest.digests()
        if not digests:
            raise PublishError(f"{folder / MANIFEST_FILE} records no checksum: re-export the model first")
        manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
        checksums = {**digests, MANIFEST_FILE: _sha256(manifest_bytes)}
        published = self._get_json(_key(product, manifest.version, CHECKSUMS_FILE))
        if published is not None and published != checksums:
            raise PublishError(f"{product} {manifest.version} is already published with other content: "
                               "versions are immutable, save the model under a new version")
        for name in sorted(digests):
            self.store.put(_key(product, manifest.version, name), (folder / name).read_bytes(),
                           "application/octet-stream")
        self.store.put(_key(product, manifest.version, CHECKSUMS_FILE), _json(checksums), "application/json")
        self.store.put(_key(product, manifest.version, MANIFEST_FILE), manifest_bytes, "application/json")
        log.info("pushed %s version %s (%d files)", product, manifest.version, len(digests))
        return product, manifest.version

    def products(self) -> list[str]:
        return sorted({key.split("/")[1] for key in self.store.keys(PREFIX + "/") if key.count("/") >= 2})

    def versions(self, product: str) -> dict[str, bool]:
        """Each version of ``product`` -> whether it is complete (checksums and manifest uploaded)."""
        files: dict[str, set[str]] = {}
        for key in self.store.keys(_key(product) + "/"):
            parts = key.split("/")
            if len(parts) == 4:
                files.setdefault(parts[2], set()).add(parts[3])
        return {version: {CHECKSUMS_FILE, MANIFEST_FILE} <= names for version, names in sorted(files.items())}

    def pointer(self, product: str) -> dict[str, Any]:
        """``{"product": [history], "lines": {line: [history]}, "shadow": {"product": entry, "lines": {line:
        entry}}}``; a history's last entry is the one served, a shadow entry the candidate scored beside it."""
        pointer = self._get_json(_key(product, POINTER_FILE)) or {}
        shadow = pointer.get("shadow") or {}
        return {"product": list(pointer.get("product", [])), "lines": dict(pointer.get("lines", {})),
                "shadow": {"product": shadow.get("product"), "lines": dict(shadow.get("lines") or {})}}

    @staticmethod
    def shadowed(pointer: dict[str, Any]) -> dict[str, str]:
        """Shadow candidates as :meth:`served` gives the live versions: ``""`` (every line) or line -> version."""
        shadow = pointer.get("shadow") or {}
        out = {"": shadow["product"]["version"]} if shadow.get("product") else {}
        out.update({line: entry["version"] for line, entry in (shadow.get("lines") or {}).items() if entry})
        return out

    def shadow(self, product: str, version: str | None, line: str | None = None) -> str | None:
        """Score ``version`` in shadow beside the promoted one (on every line, or on ``line``); None clears
        the candidate. Returns the candidate replaced, if any."""
        _check_names(product, version, line)
        if version is not None and not self.versions(product).get(version):
            raise PublishError(f"{product} has no complete version {version!r}: push it first")
        pointer = self.pointer(product)
        shadow = pointer["shadow"]
        before = (shadow["lines"].get(line) if line else shadow["product"]) or {}
        entry = None if version is None else {
            "version": version, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if line:
            shadow["lines"].pop(line, None)
            if entry:
                shadow["lines"][line] = entry
        else:
            shadow["product"] = entry
        self._put_pointer(product, pointer)
        log.info("shadow of %s%s: %s", product, f" on line {line}" if line else "", version or "cleared")
        return before.get("version")

    @staticmethod
    def served(pointer: dict[str, Any]) -> dict[str, str]:
        """Folder name (``<product>`` or ``<product>@<line>``) -> version, from :meth:`pointer`'s document,
        keyed by the names a cache uses; the product's own name comes under ``""``."""
        out = {"": pointer["product"][-1]["version"]} if pointer["product"] else {}
        out.update({line: history[-1]["version"] for line, history in pointer["lines"].items() if history})
        return out

    def promote(self, product: str, version: str, line: str | None = None) -> None:
        _check_names(product, version, line)
        if not self.versions(product).get(version):
            raise PublishError(f"{product} has no complete version {version!r}: push it first")
        pointer = self.pointer(product)
        history = pointer["lines"].setdefault(line, []) if line else pointer["product"]
        history.append({"version": version, "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        # The shadow candidate promoted: it is live now, so it stops being scored in shadow (same write).
        shadow = pointer["shadow"]
        if line and (shadow["lines"].get(line) or {}).get("version") == version:
            del shadow["lines"][line]
        elif not line and (shadow["product"] or {}).get("version") == version:
            shadow["product"] = None
        self._put_pointer(product, pointer)
        log.info("promoted %s version %s%s", product, version, f" on line {line}" if line else "")

    def rollback(self, product: str, line: str | None = None) -> str | None:
        """Serve the previously promoted version again; returns it. A line with nothing before its first
        promotion falls back to the product-wide version (returns None)."""
        _check_names(product, line)
        pointer = self.pointer(product)
        history = pointer["lines"].get(line, []) if line else pointer["product"]
        if not history or (line is None and len(history) < 2):
            raise PublishError(f"{product}{' on line ' + line if line else ''}: no earlier promotion to roll back to")
        history.pop()
        if line and not history:
            del pointer["lines"][line]
        self._put_pointer(product, pointer)
        back = history[-1]["version"] if history else None
        log.info("rolled %s%s back to %s", product, f" on line {line}" if line else "", back or "the product-wide model")
        return back

    def _put_pointer(self, product: str, pointer: dict[str, Any]) -> None:
        # One small object replaced whole: readers see the old or the new pointer, never a mix.
        self.store.put(_key(product, POINTER_FILE), _json(pointer), "application/json")

    def _get_json(self, key: str) -> Any:
        data = self.store.get(key)
        return None if data is None else json.loads(data)


class ModelCache:
    """Promoted versions pulled into ``cache_dir``, laid out as a model folder for :class:`ModelRegistry`."""

    def __init__(self, models: ModelStore, cache_dir: str | Path) -> None:
        self.models = models
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def sync(self, product: str) -> list[PullRefused]:
        """Pull whatever is promoted for ``product`` (product-wide and per line) and point the cache at it;
        the versions that cannot be pulled are returned, their folders left as they were."""
        if not valid_name(product):
            return []
        pointer = self.models.pointer(product)
        served = {(f"{product}@{line}" if line else product): version
                  for line, version in ModelStore.served(pointer).items()}
        shadowed = {(f"{product}@{line}" if line else product): version
                    for line, version in ModelStore.shadowed(pointer).items()}
        refusals = []
        for folder, wanted in ((self.cache_dir, served), (self.cache_dir / SHADOW_DIR, shadowed)):
            for name, version in sorted(wanted.items()):
                try:
                    self._point(name, self._pulled(product, version), folder)
                except PullRefused as refusal:
                    refusals.append(refusal)
        for link in self.cache_dir.glob(f"{product}@*"):  # a line rolled back to the product-wide model
            if link.is_symlink() and link.name not in served:
                link.unlink()
        shadow_dir = self.cache_dir / SHADOW_DIR
        for link in [*shadow_dir.glob(product), *shadow_dir.glob(f"{product}@*")]:  # a cleared or promoted candidate
            if link.is_symlink() and link.name not in shadowed:
                link.unlink()
        return refusals

    def pull(self, product: str, version: str) -> Path:
        """The verified local folder of any pushed ``version`` of ``product``, promoted or not (``lineguard
        rescore --model``); raises PullRefused when it is missing or fails its checks."""
        _check_names(product, version)
        return self._pulled(product, version)

    def _point(self, name: str, target: Path, folder: Path | None = None) -> None:
        folder = folder or self.cache_dir
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / name
        relative = os.path.relpath(target, folder)
        if link.is_symlink() and os.readlink(link) == relative:
            return
        if link.exists() and not link.is_symlink():
            raise PullRefused(name.partition("@")[0], "cache", f"{link} is a real folder, not a pulled model: remove it")
        tmp = folder / f".{name}.link"
        tmp.unlink(missing_ok=True)
        os.symlink(relative, tmp)
        os.replace(tmp, link)  # atomic: the registry sees the old version or the new one

    def _pulled(self, product: str, version: str) -> Path:
        """The verified local copy of ``version``, downloaded (into a staging folder, renamed when whole) if needed."""
        target = self.cache_dir / VERSIONS_DIR / product / version
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            self._download(product, version, staging)
            try:
                staging.rename(target)
            except OSError:  # pulled meanwhile by another registry sharing the cache
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _download(self, product: str, version: str, staging: Path) -> None:
        def refuse(reason: str, message: str) -> PullRefused:
            return PullRefused(product, reason, f"{product} {version}: {message}")

        raw = {name: self.models.store.get(_key(product, version, name)) for name in (CHECKSUMS_FILE, MANIFEST_FILE)}
        if None in raw.values():
            raise refuse("incomplete", f"{CHECKSUMS_FILE} or {MANIFEST_FILE} not uploaded yet")
        try:
            checksums = json.loads(raw[CHECKSUMS_FILE])
            manifest = json.loads(raw[MANIFEST_FILE])
        except ValueError as exc:
            raise refuse("incomplete", f"unreadable {CHECKSUMS_FILE} or {MANIFEST_FILE} ({exc})") from exc
        if _sha256(raw[MANIFEST_FILE]) != checksums.get(MANIFEST_FILE):
            raise refuse("checksum", f"{MANIFEST_FILE} differs from {CHECKSUMS_FILE}")
        vouched = manifest.get("files") or ({ONNX_FILE: manifest["onnx_sha256"]} if manifest.get("onnx_sha256") else {})
        files = {name: digest for name, digest in checksums.items() if name != MANIFEST_FILE}
        if not vouched or vouched != files or not all(valid_name(name) for name in files):
            raise refuse("checksum", f"the manifest's files {sorted(vouched)} differ from {CHECKSUMS_FILE}'s")
        for name, expected in sorted(files.items()):
            data = self.models.store.get(_key(product, version, name))
            if data is None:
                raise refuse("missing", f"{name} not uploaded yet")
            if _sha256(data) != expected:
                raise refuse("checksum", f"{name} sha256 {_sha256(data)[:16]}... differs from the recorded "
                                         f"{expected[:16]}... (half-uploaded or corrupted)")
            (staging / name).write_bytes(data)
        (staging / MANIFEST_FILE).write_bytes(raw[MANIFEST_FILE])
