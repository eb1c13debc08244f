#!/usr/bin/env bash
# Debian's mosquitto MQTT broker for the reject gate's MQTT test (tests/test_gates.py), which starts it
# itself on a free loopback port with a minimal configuration (the package's service is not used). The
# Python side (paho-mqtt, and asyncua whose own server the OPC UA test runs) comes from the dev extra.
set -euo pipefail
exec bash "$(dirname "$0")/../debian_install.sh" 'test -x /usr/sbin/mosquitto' mosquitto
