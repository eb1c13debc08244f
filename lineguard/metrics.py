"""Prometheus metrics: one HTTP endpoint per process, opened when its ``metrics_port`` is set.

Each part defines its own metrics beside its code (``producers/metrics.py``,
``processors/metrics.py``, ``sinks/metrics.py``), all prefixed ``lineguard_``
and registered in prometheus_client's default registry; a process runs one
part, so its endpoint shows that part's metrics (plus the client's process
and Python collectors: RSS, CPU, open files, GC).

Labels stay low-cardinality on purpose: line, topic/partition, reason code,
sink kind. Never a frame id, never a secret.

The same endpoint answers the orchestrator's probes: ``/live`` (200 while the
process serves HTTP: cheap) and ``/ready`` (200 only when the component's
readiness check, set with :func:`set_readiness`, finds nothing missing; else
503 with the reason).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger("lineguard.metrics")

_servers: dict[tuple[str, int], Any] = {}
# Why the component is not ready (None: ready); a component without a check is ready once it serves.
ReadinessCheck = Callable[[], "str | None"]
_readiness: list[ReadinessCheck] = []


def set_readiness(check: ReadinessCheck) -> None:
    """What ``/ready`` asks: ``check()`` returns None when ready, else why not (one per process)."""
    _readiness[:] = [check]


def readiness() -> str | None:
    """Why this process is not ready, or None."""
    for check in _readiness:
        try:
            reason = check()
        except Exception as exc:  # noqa: BLE001 - a failing check is a "not ready", never a crash
            reason = f"readiness check failed: {type(exc).__name__}: {exc}"
        if reason:
            return reason
    return None


def _probe_app(metrics_app: Callable) -> Callable:
    """``/live`` and ``/ready`` beside prometheus_client's ``/metrics``."""
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path not in ("/live", "/ready"):
            return metrics_app(environ, start_response)
        reason = readiness() if path == "/ready" else None
        status, body = ("503 Service Unavailable", f"not ready: {reason}\n") if reason else (
            "200 OK", "ready\n" if path == "/ready" else "alive\n")
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]
    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # probes every few seconds would flood the log


def serve_metrics(port: int, host: str = "127.0.0.1", component: str = "") -> int | None:
    """Expose ``/metrics``, ``/live`` and ``/ready`` on ``host:port`` from a daemon thread; None (and
    nothing opened) when port is 0.

    Idempotent per address, so a part started twice in one process (tests) shares the endpoint.
    """
    if not port:
        return None
    if (host, port) in _servers:
        return port
    from prometheus_client import make_wsgi_app

    server = make_server(host, port, _probe_app(make_wsgi_app()), _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    _servers[(host, port)] = server
    log.info("%s metrics on http://%s:%d/metrics", component or "lineguard", host, port)
    return port


def stop_metrics() -> None:
    """Close every endpoint this process opened (tests)."""
    _readiness.clear()
    for key, server in list(_servers.items()):
        server.shutdown()
        server.server_close()
        del _servers[key]
