#!/usr/bin/env bash
# Headless Chromium for the dashboard test (tests/test_dashboard.py), from Debian's packages. The Python
# side (playwright, used with executable_path=/usr/bin/chromium; never `playwright install`) comes from
# the dev extra in pyproject.toml.
set -euo pipefail
exec bash "$(dirname "$0")/../debian_install.sh" '/usr/bin/chromium --version' chromium fonts-dejavu-core
