"""``lineguard tail``: print a line's verdicts as an MES client sees them.

A plain consumer of ``lineguard.verdicts.<line>``: it decodes each message with
the wire contract and prints one line per verdict (a short text line, or the
decoded message as JSON with ``--json``). It commits nothing: a throwaway
consumer group, reading from the end (new verdicts) or ``--from-beginning``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid

from lineguard.cli_options import add_until_idle
from lineguard.config import ConfigError, Settings


def _format(verdict, partition: int, offset: int, as_json: bool) -> str:  # noqa: ANN001 - a Verdict
    if as_json:
        return json.dumps(verdict.to_dict(), separators=(",", ":"))
    captured = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(verdict.captured_at_ns / 1e9))
    mark = "DEFECT" if verdict.is_defective else "ok    "
    return (f"{captured}Z {verdict.camera_id:<12} {mark} score={verdict.score:.4f} thr={verdict.threshold:.4f} "
            f"{verdict.product} {verdict.model_name}@{verdict.model_version} frame={verdict.frame_id} "
            f"p{partition}@{offset}")


def run_tail(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaError, TopicPartition

    from lineguard.kafka import consumer_client
    from lineguard.schemas import SchemaError, Verdict, topics

    try:
        topic = topics.verdicts(args.line)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    consumer = consumer_client(settings.kafka, f"lineguard-tail-{uuid.uuid4().hex[:8]}",
                               **{"enable.auto.commit": False,
                                  "auto.offset.reset": "earliest" if args.from_beginning else "latest"})
    printed = bad = 0
    last = time.monotonic()

    def on_assign(c, partitions: list[TopicPartition]) -> None:  # noqa: ANN001
        nonlocal last
        last = time.monotonic()  # idle time counts from the assignment, not from start-up
        c.assign(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    try:
        while not stop.is_set():
            if args.count and printed >= args.count:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                if args.until_idle and time.monotonic() - last > args.until_idle:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"tail: {msg.error()}", file=sys.stderr)
                continue
            last = time.monotonic()
            try:
                verdict = Verdict.decode(msg.value(), max_bytes=settings.kafka.message_max_bytes)
            except SchemaError as exc:
                bad += 1
                print(f"tail: undecodable message at p{msg.partition()}@{msg.offset()}: {exc}", file=sys.stderr)
                continue
            print(_format(verdict, msg.partition(), msg.offset(), args.json), flush=True)
            printed += 1
    finally:
        consumer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"tail: line={args.line} verdicts={printed} undecodable={bad}", file=sys.stderr, flush=True)
    return 0


def register_tail(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tail", help="print a line's verdicts (what an MES client receives)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--line", required=True, help="line id: reads lineguard.verdicts.<line>")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest retained verdict")
    p.add_argument("--json", action="store_true", help="print each verdict as one JSON object per line")
    p.add_argument("--count", type=int, default=0, help="exit after this many verdicts (default: no limit)")
    add_until_idle(p, "exit once no verdict arrived for this long (default: run until Ctrl-C)")
    p.set_defaults(handler=run_tail)
