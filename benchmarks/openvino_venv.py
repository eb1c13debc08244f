"""The OpenVINO flavour's own virtualenv: ``.cache/venv-openvino`` (or ``LINEGUARD_OPENVINO_VENV``).

``onnxruntime-openvino`` installs the same ``onnxruntime`` module as the CPU wheel: in one environment
the second install overwrites the first's files and uninstalling either breaks both. So the OpenVINO
Execution Provider is measured and parity-tested from a separate venv that has this checkout installed
editable with every runtime dependency except a CPU/GPU onnxruntime, driven as a subprocess by
``lineguard bench engine --openvino`` and ``tests/test_openvino.py``.

    python -m lineguard.benchmarks.openvino_venv        # create or refresh it (make openvino-deps)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from .anomalib_venv import base_python, repo_root

# Used when pyproject.toml declares no `openvino` extra. 1.24.1 bundles OpenVINO 2025.4 (its CPU plugin
# included): nothing else to install.
DEFAULT_OPENVINO = "onnxruntime-openvino>=1.24"
STAMP = ".lineguard-stamp"
PROVIDER = "OpenVINOExecutionProvider"


def default_venv() -> Path:
    return Path(os.environ.get("LINEGUARD_OPENVINO_VENV") or repo_root() / ".cache" / "venv-openvino")


def venv_python(venv: Path | None = None) -> Path | None:
    """The venv's python if it was set up completely (its stamp is written last), else None."""
    venv = venv or default_venv()
    python = venv / "bin" / "python"
    return python if python.exists() and (venv / STAMP).exists() else None


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: Path | None = None) -> list[str]:
    """The project's runtime dependencies without any onnxruntime flavour, plus the OpenVINO one.

    Read from pyproject.toml so the venv follows the project whether onnxruntime is a hard dependency or
    an extra there; the project itself is then installed with --no-deps so pip cannot pull the CPU wheel.
    """
    project = tomllib.loads((pyproject or repo_root() / "pyproject.toml").read_text())["project"]
    base = [r for r in project.get("dependencies", []) if not _name(r).startswith("onnxruntime")]
    openvino = [r for r in project.get("optional-dependencies", {}).get("openvino", [])
                if _name(r) == "onnxruntime-openvino"]
    return base + (openvino or [DEFAULT_OPENVINO])


def ensure_venv(venv: Path | None = None, log: Path | None = None) -> Path:
    """Create ``venv`` (once; again when the requirements change) and return its python."""
    venv = venv or default_venv()
    python = venv / "bin" / "python"
    wanted = "\n".join(requirements())
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"setting up the OpenVINO venv {venv} (onnxruntime-openvino and the project's dependencies; "
          "about 450 MB)", file=sys.stderr)
    out = open(log, "a") if log else None
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # setuptools announces each editable install with a warning pip shows even under -q (as in the Makefile).
    env = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation", "PYTHONNOUSERSITE": "1"}
    try:
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        stamp.unlink(missing_ok=True)
        for name in ("onnxruntime", "onnxruntime-gpu"):  # a flavour left there would share the module's files
            subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", name], stdout=out, stderr=out, env=env)
        subprocess.run([*pip, *requirements()], check=True, stdout=out, stderr=out, env=env)
        subprocess.run([*pip, "--no-deps", "-e", str(repo_root())], check=True, stdout=out, stderr=out, env=env)
        # Fails here, with pip's log, rather than mid-benchmark: the provider must be there and the
        # onnxruntime module must be the OpenVINO wheel's alone.
        check = ("import importlib.metadata as m, onnxruntime as ort, lineguard.engines.runtime\n"
                 f"assert {PROVIDER!r} in ort.get_available_providers(), ort.get_available_providers()\n"
                 "for other in ('onnxruntime', 'onnxruntime-gpu'):\n"
                 "    try:\n        m.distribution(other)\n    except m.PackageNotFoundError:\n        continue\n"
                 "    raise SystemExit(other + ' is installed beside onnxruntime-openvino')\n")
        subprocess.run([str(python), "-c", check], check=True, stdout=out, stderr=out, env=env)
    finally:
        if out:
            out.close()
    stamp.write_text(wanted)
    return python


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None, help=f"default {default_venv()}")
    args = parser.parse_args(argv)
    python = ensure_venv(args.venv)
    version = subprocess.run([str(python), "-c", "import onnxruntime as o; print(o.__version__, "
                              "*o.get_available_providers())"], capture_output=True, text=True, check=True)
    print(f"{python}: onnxruntime {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
