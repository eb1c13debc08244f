"""The model manifest: everything about a trained model that is not the graph itself.

It sits beside ``model.onnx`` as ``manifest.json``. The decision threshold
lives here, never inside the graph, so a line can override it without
re-exporting (``processor.threshold_overrides``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # written beside it by `lineguard export --int8`
FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class InputSpec:
    height: int
    width: int
    # Per-channel normalisation applied after scaling pixels to [0, 1].
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@dataclass
class Thresholds:
    """``value`` is the one in force; the others record how it could be chosen."""

    value: float
    method: str  # "normal_quantile" or "f1_optimal"
    normal_quantile: float | None = None  # from normal validation images at target_false_reject_rate
    target_false_reject_rate: float | None = None
    f1_optimal: float | None = None  # when labelled defects were available


@dataclass
class Manifest:
    kind: str  # baseline | patchcore | efficientad
    name: str
    version: str
    input: InputSpec
    thresholds: Thresholds
    # Anomaly-map values mapped to 0 and 1 when drawing heatmaps, so colours mean the same on every frame.
    map_display_range: tuple[float, float] = (0.0, 1.0)
    backbone: dict[str, Any] | None = None  # {"name", "layers", "weights_sha256"}
    training: dict[str, Any] = field(default_factory=dict)  # {"n_images", "images_sha256", ...}
    calibration: dict[str, Any] = field(default_factory=dict)  # normal-score statistics
    onnx_sha256: str | None = None
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def save(self, model_dir: str | Path) -> Path:
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = model_dir / ONNX_FILE
        if onnx_path.exists():
            self.onnx_sha256 = sha256_file(onnx_path)
        path = model_dir / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        tmp.replace(path)  # atomic: a processor polling the folder never reads half a file
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "Manifest":
        path = Path(model_dir) / MANIFEST_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {MANIFEST_FILE} in {model_dir}: not a lineguard model folder")
        doc = json.loads(path.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported manifest format_version {doc.get('format_version')!r}")
        doc["input"] = InputSpec(**doc["input"])
        doc["thresholds"] = Thresholds(**doc["thresholds"])
        doc["map_display_range"] = tuple(doc["map_display_range"])
        return cls(**doc)


def images_fingerprint(paths: list[str | Path]) -> str:
    """A hash over the training files' names and contents: which data made this model."""
    digest = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        digest.update(Path(p).name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()
