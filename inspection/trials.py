"""``lineguard models shadow|compare`` and the audit trail of ``models promote|rollback|shadow``.

Every change of what a line serves or trials is recorded in the ClickHouse ``model_events`` table (who: ``--by``,
else $USER; when; why: ``--reason``; the version before and after), written through ``lineguard.stores`` by the
CLI itself, as ``lineguard report`` reads through it: one row per command, no topic or sink in between. The
store is opened (and its schema created) before the pointer changes, so a change that cannot be recorded is not
made (``--no-record`` makes it anyway). With the embedded chdb backend only one process may open its folder:
run these commands while no chdb sink holds it, or use a ClickHouse server.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import time
from typing import Any, Callable

from lineguard.config import ConfigError, Settings


def who(args: argparse.Namespace) -> str:
    return getattr(args, "by", None) or os.environ.get("USER") or getpass.getuser()


def recorded(settings: Settings, args: argparse.Namespace, action: str, product: str, line: str | None,
             change: Callable[[], tuple[str | None, str | None]]) -> tuple[str | None, str | None]:
    """Run ``change`` (returns the version before and after) and record it in ``model_events``."""
    if getattr(args, "no_record", False):
        return change()
    from lineguard.stores import open_store

    try:
        store = open_store(settings)
        store.create_schema()
    except Exception as exc:  # noqa: BLE001 - any store failure: say so, change nothing
        raise ConfigError(f"models {action}: cannot record the event in ClickHouse ({type(exc).__name__}: {exc}); "
                          "nothing changed (stop the chdb sinks or use a ClickHouse server, or pass --no-record)")
    try:
        before, after = change()
        store.insert_model_event(event_at_ns=time.time_ns(), action=action, product=product, line_id=line or "",
                                 version=after or "", previous_version=before or "", by=who(args),
                                 reason=getattr(args, "reason", None) or "", host=socket.gethostname())
        return before, after
    finally:
        store.close()


def live_version(models: Any, product: str, line: str | None) -> str | None:
    served = models.served(models.pointer(product))
    return served.get(line) or served.get("") if line else served.get("")


def shadow_version(models: Any, product: str, line: str | None) -> str | None:
    return models.shadowed(models.pointer(product)).get(line or "")


def run_compare(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.analytics.shadow import compare, format_compare
    from lineguard.stores import open_store

    with open_store(settings) as store:
        store.create_schema()
        results = compare(store, args.line, args.since or 0)
    if args.json:
        print(json.dumps({"line": args.line, "candidates": results}, indent=2, sort_keys=True, default=str))
    else:
        print(format_compare(args.line, results))
    return 0


def add_audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why (recorded in ClickHouse model_events)")
    parser.add_argument("--by", help="who (default: $USER)")
    parser.add_argument("--no-record", action="store_true",
                        help="make the change even when ClickHouse cannot record it")
