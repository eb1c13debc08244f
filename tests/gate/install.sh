#!/usr/bin/env bash
# Debian's mosquitto MQTT broker for the reject gate's MQTT test (tests/test_gates.py), which starts it
# itself on a free loopback port with a minimal configuration (the package's service is not used).
# Idempotent: does nothing when /usr/sbin/mosquitto is there. The Python side (paho-mqtt, and asyncua whose
# own server the OPC UA test runs) comes from the dev extra in pyproject.toml.
set -euo pipefail
if [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends mosquitto
/usr/sbin/mosquitto -h | head -1 || true
