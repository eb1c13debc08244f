"""``lineguard process``: run a stream-processor worker (one member of the processors' consumer group)."""

from __future__ import annotations

import argparse

from lineguard.config import Settings


def _process(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from lineguard.kafka import ensure_topics

    from .app import build_app
    from .lines import LineSelection, wait_for_frame_topics

    pconf = settings.processor
    if args.lines:
        pconf.lines = [line for line in args.lines.split(",") if line]
    if args.group:
        pconf.consumer_group = args.group
    if args.model_dir:
        pconf.model_dir = args.model_dir
    if args.max_batch:
        pconf.batching.max_batch = args.max_batch
    if args.max_wait_ms is not None:
        pconf.batching.max_wait_ms = args.max_wait_ms
    if pconf.model_source == "local" and not pconf.model_dir.is_dir():  # object_store: a cache, filled on pull
        print(f"lineguard: model dir {pconf.model_dir} does not exist (train a model first: lineguard train)")
        return 2
    try:
        selection = LineSelection(pconf.lines)
    except ValueError as exc:
        print(f"lineguard: processor.lines: {exc}")
        return 2
    if not (selection.ids or selection.patterns):
        print("lineguard: no lines to process (set processor.lines or --lines, e.g. '*' for every line)")
        return 2
    ensure_topics(settings.kafka, selection.ids)
    from lineguard.metrics import serve_metrics, set_readiness

    serve_metrics(pconf.metrics_port, settings.metrics_host, "processor")
    app, processor = build_app(settings, wait_for_frame_topics(selection, settings.kafka))
    set_readiness(processor.not_ready)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    worker.execute_from_commandline()
    return 0


def _parts(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from lineguard.kafka import ensure_topics
    from lineguard.metrics import serve_metrics, set_readiness

    from .part_service import PartService

    ensure_topics(settings.kafka, [args.line])
    serve_metrics(settings.processor.metrics_port, settings.metrics_host, "parts")
    service = PartService(settings, args.line, group=args.group)
    set_readiness(service.not_ready)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        counts = service.run(stop, idle_exit_s=args.until_idle)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"parts: line={args.line} decided={counts['decided']} complete={counts['complete']} "
          f"deadline={counts['deadline']} missing_views={counts['missing_views']} late={counts['late']} "
          f"defective={counts['defective']} deadletter={counts['deadletter']}", flush=True)
    return 0


def _line_id(value: str) -> str:
    from lineguard.schemas import topics

    try:
        return topics.check_line_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from .replay import REPLAYABLE_REASONS, ReplayFilter, replay_deadletters

    if not args.deadletter:
        print("lineguard replay: say what to replay: --deadletter (the only source so far)")
        return 2
    reasons = tuple(r for r in (args.reason or "").split(",") if r) or REPLAYABLE_REASONS
    wanted = ReplayFilter(reasons=reasons, since_ns=args.since, line=args.line)
    plan = replay_deadletters(settings, wanted, dry_run=args.dry_run)
    print(plan.summary(), flush=True)
    return 1 if plan.counts["not_delivered"] else 0


def _rescore(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from .rescore import ModelNotFound, rescore

    if args.model_dir:
        settings.processor.model_dir = args.model_dir
    until_ns = args.until if args.until is not None else time.time_ns()
    if args.since >= until_ns:
        print("lineguard rescore: --since must be before --until")
        return 2
    try:
        print(rescore(settings, args.line, args.since, until_ns, args.model), flush=True)
    except ModelNotFound as exc:
        print(f"lineguard rescore: {exc}")
        return 2
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="score frames from the lines' frame topics (a faust worker)")
    p.add_argument("--lines", help="comma-separated line ids and line-id patterns such as '*' or 'plant2-*', "
                                   "followed as lines are created (default: processor.lines)")
    p.add_argument("--group", help="consumer group (default: processor.consumer_group)")
    p.add_argument("--model-dir", type=__import__("pathlib").Path, help="folder of model folders")
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-wait-ms", type=int)
    p.set_defaults(handler=_process)

    from lineguard.cli_options import add_until_idle

    p = sub.add_parser("parts", help="decide each part from its views' verdicts: lineguard.parts.<line>",
                       description="Read a line's verdicts and publish one PartVerdict per part (all expected "
                                   "views in, or the part deadline passed; plant.lines.<line>). One per line. "
                                   "Prints 'parts: line=... decided=N ...' on exit.")
    p.add_argument("--line", required=True, help="the line whose parts to decide")
    p.add_argument("--group", help="consumer group (default: lineguard-parts-<line>)")
    add_until_idle(p, "exit once no verdict arrived for this long and no part is open (default: run until SIGINT/SIGTERM)")
    p.set_defaults(handler=_parts)

    from lineguard.cli_options import parse_time_ns

    p = sub.add_parser("replay", help="re-inject dead-lettered frames that can now be scored (docs/replay.md)",
                       description="Put frames from lineguard.deadletter back on their frame topic, unchanged (same "
                                   "frame_id), once each: a marker per frame on lineguard.replay-markers makes a "
                                   "second run inject nothing. A frame cut at limits.deadletter_max_raw_bytes is "
                                   "counted, never injected. Prints 'replay: read=N replayed=R ...'.")
    p.add_argument("--deadletter", action="store_true", help="replay from the dead-letter topic")
    p.add_argument("--reason", help="comma-separated reason codes (default: unknown_product,scoring_failed)")
    p.add_argument("--since", type=parse_time_ns, help="only letters dead-lettered since (ISO time, or 30m / 12h / 7d ago)")
    p.add_argument("--line", type=_line_id, help="only frames of this line")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed; inject and mark nothing")
    p.set_defaults(handler=_replay)

    p = sub.add_parser("rescore", help="score a line's frames of a capture-time range again (docs/replay.md)",
                       description="Read the line's frames captured in [--since, --until) from its frame topic, score "
                                   "them here with the current model or --model VERSION, and publish verdicts with a "
                                   "new scored_at_ns and meta.rescored=true (ClickHouse keeps the latest per frame). "
                                   "Prints 'rescore: line=... frames=N scored=S ...'.")
    p.add_argument("--line", type=_line_id, required=True)
    p.add_argument("--since", type=parse_time_ns, required=True, help="capture time from (ISO, or 30m / 12h / 7d ago)")
    p.add_argument("--until", type=parse_time_ns, help="capture time before (default: now)")
    p.add_argument("--model", help="the model version to score with (default: what the model folder serves)")
    p.add_argument("--model-dir", type=__import__("pathlib").Path, help="folder of model folders (default: processor.model_dir)")
    p.set_defaults(handler=_rescore)
