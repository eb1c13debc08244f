"""The processor's Prometheus metrics (served by ``lineguard process`` when
``processor.metrics_port`` is set; see lineguard/metrics.py), and its lag reporter."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from lineguard.config import KafkaConfig

log = logging.getLogger("lineguard.processor")

FRAMES_IN = Counter("lineguard_processor_frames_in", "Frame messages taken from the frame topics", ["line"])
VERDICTS_OUT = Counter("lineguard_processor_verdicts_out", "Verdicts acknowledged by the broker", ["line"])
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


class LagReporter:
    """Measures the consumer group's lag on the partitions this worker holds (blocking: run in a thread)."""

    def __init__(self, kafka: KafkaConfig, group: str) -> None:
        self.kafka = kafka
        self.group = group
        self._probe = None
        self._labels: set[tuple[str, str]] = set()
        self.last: dict[tuple[str, int], int] = {}

    def measure(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from lineguard.kafka_admin import LagProbe

        if self._probe is None:
            self._probe = LagProbe(self.kafka, self.group)
        lag = self._probe.lag(sorted(partitions))
        labels = {(topic, str(partition)) for topic, partition in lag}
        for (topic, partition), value in lag.items():
            CONSUMER_LAG.labels(topic, str(partition)).set(value)
        for topic, partition in self._labels - labels:  # partitions that moved to another worker
            CONSUMER_LAG.remove(topic, partition)
        self._labels = labels
        self.last = lag
        return lag

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
