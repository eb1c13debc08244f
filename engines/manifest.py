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
FP16_FILE = "model.fp16.onnx"  # written beside it by `lineguard export --fp16`
# A precision other than fp32 is a graph derived from model.onnx; its threshold and parity figures are
# in the manifest's extra under the precision's name ({"file", "threshold", ...}).
DERIVED_FILES = {"int8": INT8_FILE, "fp16": FP16_FILE}
FORMAT_VERSION = 1


class FileMismatch(ValueError):
    """A model folder's files differ from what its manifest records; ``reason`` is ``missing`` or ``checksum``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def model_files(model_dir: str | Path) -> list[str]:
    """The files a model is made of: every plain file beside the manifest, less hidden and ``*.tmp`` ones
    (caches, and files still being written by ``lineguard export`` or rsync)."""
    return sorted(p.name for p in Path(model_dir).iterdir()
                  if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
                  and not p.name.endswith(".tmp"))


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
    # normal_quantile keeps the false-reject rate at or below the target with this probability (engines/thresholds.py);
    # None: an older manifest, whose quantile was the plain empirical one.
    confidence: float | None = None


@dataclass
class Manifest:
    kind: str  # baseline | patchcore | efficientad | simplenet
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
    files: dict[str, str] = field(default_factory=dict)  # every model file's sha256, checked before loading
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    extra: dict[str, Any] = field(default_factory=dict)
    # The camera regions the model was trained on (engines/regions.py: roi, tiling, ignore_mask_sha256);
    # None: whole frames resized. Scoring refuses a camera cut differently.
    regions: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def save(self, model_dir: str | Path) -> Path:
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.files = {name: sha256_file(model_dir / name) for name in model_files(model_dir)}
        self.onnx_sha256 = self.files.get(ONNX_FILE)
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

    def digests(self) -> dict[str, str]:
        """The sha256 of every file this manifest vouches for; a manifest older than ``files`` vouches for its graph."""
        if self.files:
            return dict(self.files)
        return {ONNX_FILE: self.onnx_sha256} if self.onnx_sha256 else {}

    def verify(self, model_dir: str | Path) -> None:
        """Raise :class:`FileMismatch` unless every recorded file is in ``model_dir`` with its recorded sha256."""
        for name, expected in sorted(self.digests().items()):
            path = Path(model_dir) / name
            if Path(name).name != name or not path.is_file():
                raise FileMismatch("missing", f"{path} is missing (the manifest records it)")
            actual = sha256_file(path)
            if actual != expected:
                raise FileMismatch("checksum", f"{path}: sha256 {actual[:16]}... differs from the manifest's "
                                               f"{expected[:16]}... (half-copied or corrupted)")


def graph_precision(manifest: Manifest, onnx_file: str) -> str:
    """``fp32``, ``fp16`` or ``int8``: which precision the graph ``onnx_file`` of this model is."""
    for precision, info in manifest.extra.items():
        if precision in DERIVED_FILES and isinstance(info, dict) and info.get("file") == onnx_file:
            return precision
    return next((p for p, name in DERIVED_FILES.items() if name == onnx_file), "fp32")


def images_fingerprint(paths: list[str | Path]) -> str:
    """A hash over the training files' names and contents: which data made this model."""
    digest = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        digest.update(Path(p).name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()
