"""The models the API serves: every model folder under ``processor.model_dir``, loaded at start-up.

Same folders, manifests and ScoringEngine as the processors, and the same lookup:
``<product>@<line>`` (a line-specific model) before ``<product>``. The folder is
read once; restart the API (or roll it) to serve a retrained model.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lineguard.engines.manifest import MANIFEST_FILE
from lineguard.engines.runtime import ScoringEngine

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # a product or line id usable as (part of) a folder name


@dataclass
class LoadedModel:
    folder: str
    product: str
    line_id: str | None  # set for a line-specific <product>@<line> folder
    engine: ScoringEngine
    loaded_at: float


class ModelCatalog:
    def __init__(self, model_dir: str | Path, threads: int = 0) -> None:
        self.model_dir = Path(model_dir)
        self.models: dict[str, LoadedModel] = {}
        self.errors: dict[str, str] = {}
        if not self.model_dir.is_dir():
            log.warning("model dir %s does not exist: no product can be inspected", self.model_dir)
            return
        for folder in sorted(p for p in self.model_dir.iterdir() if (p / MANIFEST_FILE).is_file()):
            product, _, line = folder.name.partition("@")
            if not NAME.match(product) or (line and not NAME.match(line)):
                continue
            try:
                engine = ScoringEngine(folder, threads=threads)
            except Exception as exc:  # one broken folder must not take the others down
                self.errors[folder.name] = f"{type(exc).__name__}: {exc}"
                log.error("cannot load model %s: %s", folder, exc)
                continue
            self.models[folder.name] = LoadedModel(folder.name, product, line or None, engine, time.time())
            log.info("loaded model %s (%s %s)", folder.name, engine.name, engine.version)

    def get(self, product: str, line_id: str | None = None) -> LoadedModel | None:
        if not NAME.match(product) or (line_id is not None and not NAME.match(line_id)):
            return None
        if line_id and (model := self.models.get(f"{product}@{line_id}")):
            return model
        return self.models.get(product)

    def __len__(self) -> int:
        return len(self.models)
