"""The sinks' metrics: :class:`SinkMetrics`, what one runner returns, and the Prometheus series
(served by ``lineguard sink`` when ``sinks.metrics_port`` is set; see lineguard/metrics.py).
Every series carries the sink ``kind``. The alert rules in deploy/prometheus/alerts.yml read these names."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("lineguard_sink_messages_consumed", "Messages taken from Kafka", ["kind"])
WRITTEN = Counter("lineguard_sink_items_written", "Items handed to a successful store write", ["kind"])
WRITE_SECONDS = Histogram("lineguard_sink_write_seconds", "Duration of successful store writes", ["kind"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter("lineguard_sink_retries", "Failed attempts that were retried (write or dead-letter delivery)",
                  ["kind", "operation"])
DEAD_LETTERS = Counter("lineguard_sink_dead_letters",
                       "Messages delivered to the dead-letter topic, by line (from the source topic) and reason",
                       ["kind", "line", "reason"])
COMMITS = Counter("lineguard_sink_commits", "Successful offset commits", ["kind"])
COMMIT_FAILURES = Counter("lineguard_sink_commit_failures", "Offset commits the group refused", ["kind"])
CONSUMER_LAG = Gauge("lineguard_sink_consumer_lag",
                     "Messages after the sink's committed offset (not yet durably written)",
                     ["kind", "topic", "partition"])
UNCOMMITTED = Gauge("lineguard_sink_pending_items",
                    "Items consumed and waiting to be written (the batch being gathered or retried)", ["kind"])
RETRYING = Gauge("lineguard_sink_retrying", "1 while a write is failing and being retried, else 0", ["kind"])


@dataclass
class SinkMetrics:
    consumed: int = 0        # messages taken from Kafka
    written: int = 0         # items handed to a successful write()
    dead_lettered: int = 0   # messages delivered to the dead-letter topic
    retries: int = 0         # failed write attempts that were retried
    commits: int = 0         # successful offset commits
    commit_failures: int = 0
    revocations: int = 0     # rebalances that took partitions away
    reopens: int = 0         # consumers replaced after being stuck (see .watchdog)
    # Messages after the committed offset, per "topic[partition]" this sink holds,
    # measured from the broker every sinks.lag_report_s and on exit.
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())
