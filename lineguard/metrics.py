"""Prometheus metrics: one HTTP endpoint per process, opened when its ``metrics_port`` is set.

Each part defines its own metrics beside its code (``producers/metrics.py``,
``processors/metrics.py``, ``sinks/metrics.py``), all prefixed ``lineguard_``
and registered in prometheus_client's default registry; a process runs one
part, so its endpoint shows that part's metrics (plus the client's process
and Python collectors: RSS, CPU, open files, GC).

Labels stay low-cardinality on purpose: line, topic/partition, reason code,
sink kind. Never a frame id, never a secret.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("lineguard.metrics")

_servers: dict[tuple[str, int], Any] = {}


def serve_metrics(port: int, host: str = "127.0.0.1", component: str = "") -> int | None:
    """Expose ``/metrics`` on ``host:port`` from a daemon thread; None (and nothing opened) when port is 0.

    Idempotent per address, so a part started twice in one process (tests) shares the endpoint.
    """
    if not port:
        return None
    if (host, port) in _servers:
        return port
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host)
    _servers[(host, port)] = server
    log.info("%s metrics on http://%s:%d/metrics", component or "lineguard", host, port)
    return port


def stop_metrics() -> None:
    """Close every endpoint this process opened (tests)."""
    for key, server in list(_servers.items()):
        server.shutdown()
        server.server_close()
        del _servers[key]
