"""``lineguard stack fetch|up|down|status|restart-kafka``: the local Kafka + S3 stack."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lineguard.config import Settings


def _stack(settings: Settings, brokers: int | None = None) -> Any:
    from lineguard.deploy.stack import LocalStack  # heavy-ish imports only when a stack command runs

    stack = LocalStack.from_settings(settings)
    if brokers is not None:
        stack.requested_brokers = brokers
    return stack


def _report_errors(fn: Any) -> Any:
    """Turn a StackError into a one-paragraph message and exit code 1 instead of a traceback."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from lineguard.deploy.stack import StackError

        try:
            return int(fn(args, settings))
        except StackError as exc:
            print(f"lineguard stack: {exc}")
            return 1

    return handler


@_report_errors
def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    times = _stack(settings).fetch(with_s3=not args.no_s3)
    vgw = "skipped" if times.versitygw_s is None else f"{times.versitygw_s:.1f}s"
    print(f"fetched: kafka {times.kafka_s:.1f}s, versitygw {vgw}")
    return 0


@_report_errors
def _up(args: argparse.Namespace, settings: Settings) -> int:
    info = _stack(settings, args.brokers).up(with_s3=not args.no_s3)
    brokers = info.get("kafka_brokers", 1)
    print(f"kafka: {info['kafka_bootstrap']}" + (f" ({brokers} brokers, KRaft quorum of {brokers})" if brokers > 1 else ""))
    if info.get("s3_endpoint"):
        print(f"s3:    http://{info['s3_endpoint']} (keys in {settings.state_dir / 'stack.json'})")
    return 0


@_report_errors
def _down(args: argparse.Namespace, settings: Settings) -> int:
    _stack(settings).down(purge=args.purge)
    print("stack stopped" + (" and its data removed" if args.purge else ""))
    return 0


@_report_errors
def _status(args: argparse.Namespace, settings: Settings) -> int:
    status = _stack(settings).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"state dir: {status['state_dir']}")
        nodes = status["kafka"]["nodes"]
        rows = [(f"kafka-{n['node']}" if len(nodes) > 1 else "kafka", n) for n in nodes] + [("s3", status["s3"])]
        for name, s in rows:
            state = f"running  pid {s['pid']:<7} {s['address']}" if s["running"] else "stopped"
            if s.get("frozen"):
                state += "  (frozen: SIGSTOP)"
            print(f"{name:<8} {state}  log: {s['log']}")
    # Non-zero when a Kafka node is down, so scripts can `lineguard stack status || lineguard stack up`.
    return 0 if status["kafka"]["running"] else 3


@_report_errors
def _restart_kafka(args: argparse.Namespace, settings: Settings) -> int:
    stack = _stack(settings)
    pid = stack.restart_kafka()
    print(f"kafka restarted (pid {pid})" if stack.brokers == 1 else f"kafka: {stack.brokers} nodes restarted one by one")
    return 0


def _add_stack_commands(sub: Any) -> None:
    fetch = sub.add_parser("fetch", help="download Kafka (Maven) and build versitygw (Go) into the cache")
    fetch.add_argument("--no-s3", action="store_true", help="skip versitygw")
    fetch.set_defaults(handler=_fetch)

    up = sub.add_parser("up", help="start Kafka and the S3 server (fetching what's missing)")
    up.add_argument("--no-s3", action="store_true", help="start only Kafka")
    up.add_argument("--brokers", type=int, choices=range(1, 10), metavar="N",
                    help="Kafka nodes for a new state dir (a KRaft cluster when > 1; default: stack.brokers, else 1)")
    up.set_defaults(handler=_up)

    down = sub.add_parser("down", help="stop the stack")
    down.add_argument("--purge", action="store_true", help="also delete topics, buckets and logs")
    down.set_defaults(handler=_down)

    status = sub.add_parser("status", help="what runs where (exit 3 if Kafka is not running)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    restart = sub.add_parser("restart-kafka", help="stop and start Kafka (a cluster node by node), same ports and data")
    restart.set_defaults(handler=_restart_kafka)


def register(subparsers: Any) -> None:
    stack = subparsers.add_parser("stack", help="run the local Kafka + S3 stack (no Docker)")
    _add_stack_commands(stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION"))
