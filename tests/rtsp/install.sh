#!/usr/bin/env bash
# GStreamer's RTSP server for the RTSP source test (tests/test_live_sources.py), from Debian's
# packages: the test runs tests/rtsp/server.py with the system Python (/usr/bin/python3), because
# Debian's GObject bindings (python3-gi) are built for it, not for the virtualenv's Python.
# x264enc (H.264, as IP cameras stream) is in -ugly; appsrc, videoconvert in -base; the RTP payloader
# in -good. Idempotent: does nothing when the server's bindings import already (tests/debian_install.sh).
set -euo pipefail
CHECK='import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst, GstRtspServer; Gst.init(None); assert Gst.ElementFactory.find("x264enc") and Gst.ElementFactory.find("rtph264pay")'
exec bash "$(dirname "$0")/../debian_install.sh" "/usr/bin/python3 -c '$CHECK'" \
    python3-gi python3-gst-1.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 \
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
