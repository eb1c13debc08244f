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
