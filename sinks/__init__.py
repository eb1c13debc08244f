"""Sinks: verdicts to ClickHouse (``clickhouse``), heatmaps to a folder or S3 (``heatmaps``).

``base.Sink`` owns the consumer loop (batching, dead letters, retries, commits after
writes); each concrete sink only decodes and writes. Run them with ``lineguard sink``.
"""
