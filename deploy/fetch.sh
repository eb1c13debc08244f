#!/usr/bin/env sh
# Download Kafka's jars (Maven Central) and build the versitygw S3 server (Go) into the cache
# (settings.stack.cache_dir, default .cache/). Idempotent and quick once cached. The same as
# `lineguard stack fetch` (what `make stack-deps` runs), for when that is not on PATH. Pass --no-s3 to
# skip versitygw.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" -m lineguard.cli stack fetch "$@"
