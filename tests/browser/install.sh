#!/usr/bin/env bash
# Headless Chromium for the dashboard test (tests/test_dashboard.py), from Debian's packages.
# Idempotent: does nothing when /usr/bin/chromium is there. The Python side (playwright,
# used with executable_path=/usr/bin/chromium; never `playwright install`) comes from
# the dev extra in pyproject.toml.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version
