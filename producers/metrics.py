"""The camera producers' Prometheus metrics (served by ``lineguard produce`` when
``producer.metrics_port`` is set; see lineguard/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES_SENT = Counter("lineguard_producer_frames_sent", "Frames handed to the Kafka producer", ["line"])
FRAMES_DELIVERED = Counter("lineguard_producer_frames_delivered",
                           "Frames acknowledged by all in-sync replicas", ["line"])
FRAMES_FAILED = Counter("lineguard_producer_frames_failed",
                        "Frames refused or reported failed by the delivery callback", ["line"])
FRAME_BYTES = Counter("lineguard_producer_frame_bytes", "Bytes of frame messages handed to the producer", ["line"])
QUEUE_FULL_WAITS = Counter("lineguard_producer_queue_full_waits",
                           "Times a send waited because the local producer queue was full (back-pressure)",
                           ["line"])
IN_FLIGHT = Gauge("lineguard_producer_in_flight", "Frames queued or in flight, not yet acknowledged", ["line"])

# Live sources (RTSP, GenICam): see producers/live.py for what each counts.
STREAM_FRAMES_RECEIVED = Counter("lineguard_producer_stream_frames_received",
                                 "Frames received from a live camera stream (each is published)", ["line", "camera"])
STREAM_GAP_FRAMES = Counter("lineguard_producer_stream_gap_frames",
                            "Frames a live camera sent that were never received (estimated)", ["line", "camera"])
STREAM_RECONNECTS = Counter("lineguard_producer_stream_reconnects",
                            "Times a live camera stream was opened again after it dropped", ["line", "camera"])
STREAM_STALE = Gauge("lineguard_producer_stream_stale",
                     "1 while a live camera has sent no frame for producer.stream_stale_after_s", ["line", "camera"])
STREAM_STALE_ALARMS = Counter("lineguard_producer_stream_stale_alarms",
                              "Times a live camera stream went stale", ["line", "camera"])
STREAM_SECONDS_SINCE_FRAME = Gauge("lineguard_producer_stream_seconds_since_frame",
                                   "Seconds since a live camera's last frame", ["line", "camera"])
