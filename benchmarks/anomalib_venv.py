"""anomalib's own virtualenv for ``lineguard bench anomalib``: torch, torchvision and anomalib pinned,
set up once and cached (``.cache/anomalib-venv``, or ``LINEGUARD_ANOMALIB_VENV``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Pinned like the main venv's torch so both sides run the same kernels; anomalib's own dependencies
# (lightning, kornia, timm, FrEIA, ...) come with it from PyPI: its PatchCore imports with those alone.
# onnx only serves the optional export of anomalib's fitted model (torch.onnx needs it).
ANOMALIB_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "anomalib==2.7.0", "onnx")
STAMP = ".lineguard-stamp"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONNOUSERSITE": "1"}


def repo_root() -> Path:
    """The checkout this module lives in (benchmarks/ is at its top)."""
    return Path(__file__).resolve().parents[1]


def default_venv() -> Path:
    return Path(os.environ.get("LINEGUARD_ANOMALIB_VENV") or repo_root() / ".cache" / "anomalib-venv")


def base_python() -> str:
    """The interpreter the main venv was made from: the anomalib venv gets the same python3."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(venv: Path, log: Path | None = None) -> Path:
    """Create ``venv`` with anomalib installed, once: a stamp naming the requirements marks it done.

    Returns the venv's python. pip's cache makes a re-creation cheap after the first download.
    """
    python = venv / "bin" / "python"
    wanted = "\n".join(ANOMALIB_REQUIREMENTS)
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    out = open(log, "a") if log else None
    try:
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        *ANOMALIB_REQUIREMENTS], check=True, stdout=out, stderr=out)
        # The import the driver needs, so a broken install fails here with pip's log, not mid-benchmark.
        check = "import anomalib, torch, torchvision; from anomalib.models import Patchcore"
        subprocess.run([str(python), "-c", check],
                       check=True, stdout=out, stderr=out, env={**os.environ, **OFFLINE_ENV})
    finally:
        if out:
            out.close()
    stamp.write_text(wanted)
    return python
