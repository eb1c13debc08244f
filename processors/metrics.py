"""The processor's Prometheus metrics (served by ``lineguard process`` when
``processor.metrics_port`` is set; see lineguard/metrics.py). CONSUMER_LAG is set by
lineguard.kafka.LagTracker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES_IN = Counter("lineguard_processor_frames_in", "Frame messages taken from the frame topics", ["line"])
VERDICTS_OUT = Counter("lineguard_processor_verdicts_out", "Verdicts acknowledged by the broker", ["line"])
LATE_VERDICTS = Counter("lineguard_processor_late_verdicts",
                        "Verdicts scored after their line's verdict deadline (flagged late, never gated)", ["line"])
PARTS_DECIDED = Counter("lineguard_parts_decided", "Part verdicts published, by reason (complete, deadline)",
                        ["line", "reason"])
LATE_PARTS = Counter("lineguard_parts_late", "Part verdicts decided after their deadline or with a late view",
                     ["line"])
HEATMAPS_OUT = Counter("lineguard_processor_heatmaps_out", "Heatmaps acknowledged by the broker", ["line"])
DEAD_LETTERS = Counter("lineguard_processor_dead_letters", "Frames sent to the dead-letter topic, by reason code",
                       ["reason"])
PUBLISH_RETRIES = Counter("lineguard_processor_publish_retries", "Failed sends to Kafka that were retried")
BATCH_SIZE = Histogram("lineguard_processor_batch_size", "Frames per scored batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SCORING_SECONDS = Histogram("lineguard_processor_scoring_seconds",
                            "Time to decode, score and render one batch (worker threads)",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUEUE_WAIT_SECONDS = Histogram("lineguard_processor_queue_wait_seconds",
                               "Time a frame waited in the micro-batcher before scoring began",
                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PENDING = Gauge("lineguard_processor_pending_frames",
                "Frames taken from Kafka and not yet acknowledged (batcher queues and flushes in progress)")
CONSUMER_LAG = Gauge("lineguard_processor_consumer_lag",
                     "Frames after the group's committed offset, per partition this worker holds",
                     ["topic", "partition"])
