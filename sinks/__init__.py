"""Sinks: verdicts to ClickHouse (``clickhouse``), heatmaps to a folder or S3 (``heatmaps``).

``runner.SinkRunner`` owns the consumer loop (batching, retries with back-off, dead letters,
commits after writes, rebalances); each sink is a ``writer.Writer`` that only decodes and
writes, and says which failures are permanent (``errors``). Run them with ``lineguard sink``.
"""
