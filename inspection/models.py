"""Which model scores a frame, and picking up retrained or newly promoted models without a restart.

Layout of the model directory::

    models/<product>/            manifest.json + model.onnx, used on every line
    models/<product>@<line>/     optional: a line-specific model for that product
    models/.shadow/<product>[@<line>]/   optional: a shadow candidate, scored beside the live model;
                                 its verdicts go to lineguard.shadow.<line> only (``shadow_for``)

A folder whose files (manifest or any model file) changed is reloaded: every file's sha256 is
checked against the manifest first, since copy tools such as rsync write the manifest before the
graph. The new model is loaded beside the old one and swapped in only when whole. A new model that
is refused (a checksum differs, a file is missing, it fails to load) leaves the old one serving,
is logged and counted in ``lineguard_model_refusals_total{product,reason}``, and is tried again at
the next poll. With ``processor.model_source: object_store`` the folder is a local cache that
:mod:`lineguard.inspection.registry` fills with the promoted versions.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter

from lineguard.config import ProcessorConfig, Settings
from lineguard.engines.manifest import DERIVED_FILES, MANIFEST_FILE, ONNX_FILE, FileMismatch, Manifest, model_files
from lineguard.engines.runtime import ScoringEngine

if TYPE_CHECKING:
    from .registry import ModelCache

log = logging.getLogger(__name__)
SHADOW_DIR = ".shadow"  # under the model folder: the shadow candidates (lineguard.inspection.registry pulls them)
MODEL_REFUSALS = Counter("lineguard_model_refusals", "New model versions refused (kept the old one serving), "
                         "counted at each poll that refuses", ["product", "reason"])
# A product or line id usable as (part of) a folder name: no path separator, no '@', and no leading
# dot, so neither "." nor ".." nor a hidden folder can be named.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def valid_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


class ModelLoadError(RuntimeError):
    """A model folder exists but its model cannot be loaded (and no earlier version is serving)."""


@dataclass(frozen=True)
class LoadedModel:
    folder: str  # the folder's name: <product> or <product>@<line>
    product: str
    line_id: str | None  # set for a line-specific <product>@<line> folder
    engine: ScoringEngine
    loaded_at: float  # time.time()
    stamp: tuple  # the folder's files (name, inode, mtime, size) when loaded


def _stamp(folder: Path) -> tuple:
    """What changes when any of the folder's files is rewritten or the folder is swapped for another."""
    try:
        names = [MANIFEST_FILE, *model_files(folder)]
        return tuple((n, st.st_ino, st.st_mtime_ns, st.st_size) for n in names for st in [(folder / n).stat()])
    except FileNotFoundError:  # a file went away while looking
        return ()


class ModelRegistry:
    """The models under ``model_dir``, loaded on first use and reloaded (verified) when their files change.

    A folder is looked at no more often than every ``poll_s`` seconds; with a ``source`` (the object
    store), each product's promotion pointer too.
    Thread-safe: the processors and the API load and score in worker threads.
    """

    def __init__(self, model_dir: str | Path, threads: int = 0, poll_s: float = 2.0,
                 providers: list[str] | None = None, precision: str = "fp32", source: ModelCache | None = None, *,
                 max_batch: int = 16, max_batch_per_product: dict[str, int] | None = None, device_id: int = 0,
                 trt_cache_dir: str | Path | None = None, shadow: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.precision = precision
        # What each engine is built for: the largest batch the product's batcher flushes (TensorRT's profile
        # and the warm-up span 1..max_batch), the GPU and TensorRT's cache folder.
        self.max_batch = max_batch
        self.max_batch_per_product = dict(max_batch_per_product or {})
        self.device_id = device_id
        self.trt_cache_dir = trt_cache_dir
        self.poll_s = poll_s
        self.providers = providers
        self.errors: dict[str, str] = {}  # folder -> why its newest model could not be loaded
        self.reloads = 0
        # Called with each model loaded or reloaded (e.g. the processor's model-info metric); a failing
        # hook is logged, never a reason to refuse the model.
        self.on_load: list[Callable[[LoadedModel], None]] = []
        self._loaded: dict[str, LoadedModel] = {}
        self._checked_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._logged: dict[str, str] = {}  # folder -> the last refusal logged, so each is logged once
        # Object-store source: pulls go through one background thread once a product has a model.
        self.source = source
        self._pulled_at: dict[str, float] = {}
        self._pulls: dict[str, Future] = {}
        self._puller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-pull") if source else None
        # The shadow candidates: the same folder layout one level down (hidden, so never taken for a product),
        # loaded, verified and hot-reloaded the same way; the object-store pull above fills it too.
        self.shadow: ModelRegistry | None = ModelRegistry(
            self.model_dir / SHADOW_DIR, threads=threads, poll_s=poll_s, providers=providers, precision=precision,
            max_batch=max_batch, max_batch_per_product=max_batch_per_product, device_id=device_id,
            trt_cache_dir=trt_cache_dir, shadow=False) if shadow else None

    @classmethod
    def from_config(cls, config: ProcessorConfig, source: ModelCache | None = None) -> ModelRegistry:
        """The registry the processors and the API share: same folder, threads, reload period, precision, GPU
        and batch sizes."""
        return cls(source.cache_dir if source else config.model_dir, threads=config.inference_threads,
                   poll_s=config.model_poll_s, precision=config.precision, source=source,
                   providers=config.providers or None,
                   max_batch=config.batching.max_batch,
                   max_batch_per_product={p: b.max_batch for p, b in config.batching_per_product.items()},
                   device_id=config.device_id, trt_cache_dir=config.trt_cache_dir)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """:meth:`from_config`, pulling from the object store when ``processor.model_source`` says so."""
        config = settings.processor
        if config.model_source == "local":
            return cls.from_config(config)
        from lineguard.stores import open_object_store

        from .registry import ModelCache, ModelStore

        return cls.from_config(config, ModelCache(ModelStore(open_object_store(settings)), config.model_cache_dir))

    def folder_for(self, product: str, line_id: str | None = None) -> Path | None:
        """``<product>@<line>`` if it holds a model, else ``<product>``; None for invalid names or no model."""
        if not valid_name(product) or (line_id is not None and not valid_name(line_id)):
            return None
        names = [f"{product}@{line_id}", product] if line_id else [product]
        for name in names:
            folder = self.model_dir / name
            if (folder / MANIFEST_FILE).exists():
                return folder
        return None

    def graph_for(self, folder: Path) -> str:
        """The ONNX file to score with: the INT8 or FP16 graph when asked for and exported, else the FP32 one."""
        derived = DERIVED_FILES.get(self.precision)
        if derived:
            if (folder / derived).exists():
                return derived
            log.warning("precision %s: %s has no %s (lineguard export --%s); scoring with %s",
                        self.precision, folder.name, derived, self.precision, ONNX_FILE)
        return ONNX_FILE

    def get(self, product: str, line_id: str | None = None) -> LoadedModel | None:
        """The model for ``product`` on ``line_id``, (re)loaded if its files changed; None if none exists.

        Raises :class:`ModelLoadError` when the folder's model cannot be loaded and none was before.
        """
        if self.source is not None and valid_name(product):
            self._pull(product, wait=self.folder_for(product) is None)
        folder = self.folder_for(product, line_id)
        return None if folder is None else self._current(folder)

    def shadow_for(self, product: str, line_id: str | None = None) -> LoadedModel | None:
        """The shadow candidate for ``product`` on ``line_id`` (``.shadow/<product>@<line>``, else
        ``.shadow/<product>``), or None. Call after :meth:`get`, which pulls it from the object store."""
        if self.shadow is None or self.shadow.folder_for(product, line_id) is None:
            return None
        return self.shadow.get(product, line_id)

    def _pull(self, product: str, wait: bool) -> None:
        """Bring ``product``'s promoted versions into the cache, at most every ``poll_s``: waited for when
        nothing is served yet, else in the background so scoring never waits on a download."""
        with self._lock:
            task = self._pulls.get(product)
            if task is None or (task.done() and time.monotonic() - self._pulled_at[product] >= self.poll_s):
                self._pulled_at[product] = time.monotonic()
                task = self._pulls[product] = self._puller.submit(self._pull_now, product)
        if wait:
            task.result()

    def _pull_now(self, product: str) -> None:
        try:
            refusals = self.source.sync(product)
        except Exception as exc:  # the store is unreachable: keep serving what the cache has
            log.warning("cannot pull models for %s from the object store: %s: %s", product, type(exc).__name__, exc)
            return
        with self._lock:
            for refusal in refusals:
                self._refuse(product, product, refusal.reason, str(refusal), None)

    def load_all(self) -> list[LoadedModel]:
        """Every model folder with a valid name, loaded or refreshed now; broken ones are left in ``errors``."""
        if self.source is not None:
            try:
                products = self.source.models.products()
            except Exception as exc:  # the store is unreachable: serve what the cache has
                log.warning("cannot list models in the object store: %s: %s", type(exc).__name__, exc)
                products = []
            for product in products:
                self._pull_now(product)
        if not self.model_dir.is_dir():
            log.warning("model dir %s does not exist: no product can be scored", self.model_dir)
            return []
        models = []
        for folder in sorted(p for p in self.model_dir.iterdir() if (p / MANIFEST_FILE).is_file()):
            product, _, line_id = folder.name.partition("@")
            if not valid_name(product) or (line_id and not valid_name(line_id)):
                continue
            try:
                models.append(self._current(folder))
            except ModelLoadError:
                continue  # one broken folder must not take the others down
        return models

    def loaded(self) -> list[LoadedModel]:
        """The models loaded so far whose folder still holds a manifest (nothing is loaded here), by folder name."""
        with self._lock:
            models = [self._loaded[name] for name in sorted(self._loaded)]
        return [m for m in models if (self.model_dir / m.folder / MANIFEST_FILE).exists()]

    def _current(self, folder: Path) -> LoadedModel:
        key = folder.name
        with self._lock:  # loads are rare; holding the lock keeps two threads from loading one model twice
            loaded = self._loaded.get(key)
            now = time.monotonic()
            recently_checked = now - self._checked_at.get(key, float("-inf")) < self.poll_s
            if recently_checked:
                if loaded is not None:
                    return loaded
                raise ModelLoadError(self.errors.get(key, f"model {key} is not loaded"))
            self._checked_at[key] = now
            stamp = _stamp(folder)
            if loaded is not None and stamp == loaded.stamp:
                return loaded
            product, _, line_id = key.partition("@")
            onnx_file = self.graph_for(folder)
            try:
                engine = self._load_verified(folder, stamp, onnx_file)
            except Exception as exc:  # a half-copied, corrupted or broken folder
                reason = exc.reason if isinstance(exc, FileMismatch) else "load_error"
                message = f"cannot load model {key} ({onnx_file}): {type(exc).__name__}: {exc}"
                self._refuse(key, product, reason, message, loaded)
                if loaded is not None:
                    return loaded
                raise ModelLoadError(message) from exc
            self.errors.pop(key, None)
            self._logged.pop(key, None)
            model = LoadedModel(key, product, line_id or None, engine, time.time(), stamp)
            if loaded is not None:
                self.reloads += 1
                log.info("reloaded model %s: version %s -> %s (%s)", key, loaded.engine.version, engine.version,
                         onnx_file)
            else:
                log.info("loaded model %s version %s (%s) on %s", key, engine.version, onnx_file, engine.providers[0])
            self._loaded[key] = model
            for hook in self.on_load:
                try:
                    hook(model)
                except Exception:  # noqa: BLE001 - see on_load
                    log.exception("model load hook %r failed for %s", hook, key)
            return model

    def _load_verified(self, folder: Path, stamp: tuple, onnx_file: str) -> ScoringEngine:
        """The folder's model, loaded only if every file matches its manifest and nothing changed meanwhile."""
        Manifest.load(folder).verify(folder)
        product = folder.name.partition("@")[0]
        engine = ScoringEngine(folder, providers=self.providers, threads=self.threads, onnx_file=onnx_file,
                               max_batch=self.max_batch_per_product.get(product, self.max_batch),
                               device_id=self.device_id, trt_cache_dir=self.trt_cache_dir)
        if _stamp(folder) != stamp:  # rewritten while checked or loaded: what was loaded may be neither version
            raise FileMismatch("changed", f"{folder} changed while it was being loaded")
        return engine

    def _refuse(self, key: str, product: str, reason: str, message: str, serving: LoadedModel | None) -> None:
        """Count a refused version; log it once (it is tried again at every poll until it is fixed)."""
        self.errors[key] = message
        MODEL_REFUSALS.labels(product, reason).inc()
        if self._logged.get(key) == message:
            return
        self._logged[key] = message
        served = self._loaded.get(key) if serving is None else serving
        if served is not None:
            log.error("refused %s; still serving version %s", message, served.engine.version)
        else:
            log.error("refused %s", message)
