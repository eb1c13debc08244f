"""Which model scores a frame, and picking up retrained models without a restart.

Layout of the model directory::

    models/<product>/            manifest.json + model.onnx, used on every line
    models/<product>@<line>/     optional: a line-specific model for that product

The manifest is written last when a model is saved, so a changed manifest
(mtime or size) means a complete new model: it is loaded beside the old one
and swapped in atomically.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lineguard.engines.manifest import INT8_FILE, MANIFEST_FILE, ONNX_FILE
from lineguard.engines.runtime import ScoringEngine

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    engine: ScoringEngine
    stamp: tuple[float, int]


def _stamp(folder: Path) -> tuple[float, int] | None:
    try:
        st = (folder / MANIFEST_FILE).stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime, st.st_size)


class ModelRegistry:
    def __init__(self, model_dir: str | Path, threads: int = 0, poll_s: float = 2.0,
                 providers: list[str] | None = None, precision: str = "fp32") -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.precision = precision
        self.poll_s = poll_s
        self.providers = providers
        self._loaded: dict[str, _Loaded] = {}
        self._checked_at: dict[str, float] = {}
        self._lock = threading.Lock()  # engines load in executor threads
        self.reloads = 0

    def folder_for(self, product: str, line_id: str) -> Path | None:
        for name in (f"{product}@{line_id}", product):
            if "/" in name or name.startswith("."):
                return None  # a product name must not walk out of the model dir
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

    def get(self, product: str, line_id: str) -> ScoringEngine | None:
        """The engine for ``product`` on ``line_id``, (re)loaded if its manifest changed; None if none exists."""
        folder = self.folder_for(product, line_id)
        if folder is None:
            return None
        key = folder.name
        with self._lock:
            loaded = self._loaded.get(key)
            now = time.monotonic()
            if loaded is not None and now - self._checked_at.get(key, 0.0) < self.poll_s:
                return loaded.engine
            self._checked_at[key] = now
            stamp = _stamp(folder)
            if loaded is not None and stamp == loaded.stamp:
                return loaded.engine
            onnx_file = self.graph_for(folder)
            engine = ScoringEngine(folder, providers=self.providers, threads=self.threads, onnx_file=onnx_file)
            if loaded is not None:
                self.reloads += 1
                log.info("reloaded model %s: version %s -> %s (%s)", key, loaded.engine.version, engine.version,
                         onnx_file)
            else:
                log.info("loaded model %s version %s (%s) on %s", key, engine.version, onnx_file, engine.providers[0])
            self._loaded[key] = _Loaded(engine, stamp or (0.0, 0))
            return engine
