#!/usr/bin/env bash
# The GPU check in one go, on a machine with an NVIDIA GPU (a few minutes; see benchmarks/gpu_check.py):
#   benchmarks/gpu_check.sh [OUT_DIR] [lineguard bench gpu options, e.g. --model DIR --model DIR --data DIR]
# writes OUT_DIR/gpu_check.json and .md (default artifacts/gpu-check). Exit 0: parity passed; 1: it failed;
# 3: no GPU to check here (the reason on stderr, nothing written). PYTHON picks the interpreter of a venv
# with lineguard[gpu,tensorrt] (and the train extra to fit the models here), default .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-artifacts/gpu-check}"
shift || true
python="${PYTHON:-.venv/bin/python}"
exec "$python" -m lineguard.cli bench gpu --out "$out/gpu_check.json" "$@"
