"""Which model scores a frame, and picking up retrained models without a restart.

Layout of the model directory::

    models/<product>/            manifest.json + model.onnx, used on every line
    models/<product>@<line>/     optional: a line-specific model for that product

The manifest is written last when a model is saved, so a changed manifest
(mtime or size) means a complete new model: it is loaded beside the old one
and swapped in atomically. A new model that fails to load leaves the old one
serving (and the failure in :attr:`ModelRegistry.errors`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lineguard.config import ProcessorConfig
from lineguard.engines.manifest import INT8_FILE, MANIFEST_FILE, ONNX_FILE
from lineguard.engines.runtime import ScoringEngine

log = logging.getLogger(__name__)
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
    stamp: tuple[float, int]  # the manifest's (mtime, size) when loaded


def _stamp(folder: Path) -> tuple[float, int] | None:
    try:
        st = (folder / MANIFEST_FILE).stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime, st.st_size)


class ModelRegistry:
    """The models under ``model_dir``, loaded on first use and reloaded when their manifest changes.

    A folder's manifest is looked at no more often than every ``poll_s`` seconds.
    Thread-safe: the processors and the API load and score in worker threads.
    """

    def __init__(self, model_dir: str | Path, threads: int = 0, poll_s: float = 2.0,
                 providers: list[str] | None = None, precision: str = "fp32") -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.precision = precision
        self.poll_s = poll_s
        self.providers = providers
        self.errors: dict[str, str] = {}  # folder -> why its newest model could not be loaded
        self.reloads = 0
        self._loaded: dict[str, LoadedModel] = {}
        self._checked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ProcessorConfig) -> ModelRegistry:
        """The registry the processors and the API share: same folder, threads, reload period and precision."""
        return cls(config.model_dir, threads=config.inference_threads, poll_s=config.model_poll_s,
                   precision=config.precision)

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
        """The ONNX file to score with: the INT8 graph when asked for and exported, else the FP32 one."""
        if self.precision == "int8":
            if (folder / INT8_FILE).exists():
                return INT8_FILE
            log.warning("precision int8: %s has no %s (lineguard export --int8); scoring with %s",
                        folder.name, INT8_FILE, ONNX_FILE)
        return ONNX_FILE

    def get(self, product: str, line_id: str | None = None) -> LoadedModel | None:
        """The model for ``product`` on ``line_id``, (re)loaded if its manifest changed; None if none exists.

        Raises :class:`ModelLoadError` when the folder's model cannot be loaded and none was before.
        """
        folder = self.folder_for(product, line_id)
        return None if folder is None else self._current(folder)

    def load_all(self) -> list[LoadedModel]:
        """Every model folder with a valid name, loaded or refreshed now; broken ones are left in ``errors``."""
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
            stamp = _stamp(folder) or (0.0, 0)
            if loaded is not None and stamp == loaded.stamp:
                return loaded
            onnx_file = self.graph_for(folder)
            try:
                engine = ScoringEngine(folder, providers=self.providers, threads=self.threads, onnx_file=onnx_file)
            except Exception as exc:  # a broken or half-copied folder
                self.errors[key] = f"cannot load model {key} ({onnx_file}): {type(exc).__name__}: {exc}"
                if loaded is not None:
                    log.error("%s; still serving version %s", self.errors[key], loaded.engine.version)
                    return loaded
                log.error("%s", self.errors[key])
                raise ModelLoadError(self.errors[key]) from exc
            self.errors.pop(key, None)
            product, _, line_id = key.partition("@")
            model = LoadedModel(key, product, line_id or None, engine, time.time(), stamp)
            if loaded is not None:
                self.reloads += 1
                log.info("reloaded model %s: version %s -> %s (%s)", key, loaded.engine.version, engine.version,
                         onnx_file)
            else:
                log.info("loaded model %s version %s (%s) on %s", key, engine.version, onnx_file, engine.providers[0])
            self._loaded[key] = model
            return model
