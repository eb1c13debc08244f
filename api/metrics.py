"""Prometheus metrics of the inspection API, in a registry of its own (one per app instance).

Low-cardinality labels only: route template, method, status, product, reason code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("lineguard_api_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("lineguard_api_request_seconds", "HTTP request time",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.inspections = Counter("lineguard_api_inspections_total", "Images inspected",
                                   ["product", "result"], registry=self.registry)
        self.inspection_seconds = Histogram("lineguard_api_inspection_seconds",
                                            "Decode + score (+ heatmap) time of an inspection",
                                            ["product"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rejections = Counter("lineguard_api_rejected_total", "Inspection requests refused",
                                  ["reason"], registry=self.registry)
        self.models_loaded = Gauge("lineguard_api_models_loaded", "Model folders loaded at start-up",
                                   registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
