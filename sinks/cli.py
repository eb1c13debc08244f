"""``lineguard sink clickhouse|parts|labels|shadow|heatmaps [--lines L1,L2 | all] [--until-idle SECONDS]``."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from lineguard.cli_options import add_until_idle, parse_line_ids
from lineguard.config import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sink",
        help="write verdicts, part verdicts or operator labels to ClickHouse, or heatmaps to object storage",
        description="Consume verdict or heatmap topics and write them out; offsets are committed "
        "only after a successful write. Prints 'sink: kind=... written=N deadletter=N retries=N' on exit.",
    )
    parser.add_argument("kind", choices=["clickhouse", "parts", "labels", "shadow", "heatmaps"],
                        help="clickhouse: verdicts -> verdicts table; parts: part verdicts -> parts table; "
                             "labels: operator labels -> labels table; shadow: shadow candidates' verdicts -> "
                             "shadow_verdicts table; heatmaps: overlays -> object store")
    parser.add_argument(
        "--lines", default="all",
        help="comma-separated line ids, or 'all' (default: every line, new ones included)",
    )
    parser.add_argument(
        "--group", default=None,
        help="consumer group (default: lineguard-sink-<kind>); sinks sharing a group share the work",
    )
    add_until_idle(parser, "exit once no message arrived for this long (default: run until SIGINT/SIGTERM)")
    parser.set_defaults(handler=run_sink)


def run_sink(args: argparse.Namespace, settings: Settings) -> int:
    lines = parse_line_ids(args.lines, allow_all=True)
    from lineguard.metrics import serve_metrics, set_readiness

    from .runner import SinkRunner

    serve_metrics(settings.sinks.metrics_port, settings.metrics_host, f"sink {args.kind}")
    stop = threading.Event()
    store: Any
    if args.kind in ("clickhouse", "parts", "labels", "shadow"):
        from lineguard.stores import open_store

        from .clickhouse import ClickHouseWriter
        from .labels import LabelsWriter
        from .parts import PartsWriter
        from .shadow import ShadowWriter

        store = open_store(settings)
        writer_class = {"clickhouse": ClickHouseWriter, "parts": PartsWriter, "labels": LabelsWriter,
                        "shadow": ShadowWriter}[args.kind]
        writer: Any = writer_class(settings, store)
    else:
        from lineguard.stores import open_object_store

        from .heatmaps import HeatmapWriter

        store = open_object_store(settings)
        writer = HeatmapWriter(settings, store)
    sink = SinkRunner(settings, writer, lines=lines, group_id=args.group)
    set_readiness(sink.not_ready)
    # SIGINT/SIGTERM: finish the batch, commit, leave the group (restored afterwards, so
    # calling this handler in-process, as tests do, leaves the caller's handlers alone).
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        metrics = sink.run(stop_event=stop, idle_exit_s=args.until_idle)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        store.close()
    print(f"sink: kind={args.kind} written={metrics.written} deadletter={metrics.dead_lettered} "
          f"retries={metrics.retries}", flush=True)
    return 0
