"""One spelling for each option that recurs across subcommands; the old spellings stay as hidden aliases.

* ``--config FILE`` / ``--log-level LEVEL``: global, accepted before or after the subcommand.
* ``--out FILE``: where a command writes its result (``--json FILE`` before).
* ``--json``: a flag, print JSON instead of text.
* ``--until-idle SECONDS``: exit once nothing arrived for this long (``--idle-exit`` in ``tail`` before).
* ``--lines L1,L2``: line ids, checked (``parse_line_ids``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _DeprecatedAlias(argparse.Action):
    """Stores like the option it stands for, and says on stderr which spelling to use instead."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """``default=argparse.SUPPRESS`` on subcommands, so that leaving them out there keeps the value given
    before the subcommand."""
    parser.add_argument("--config", default=default, metavar="FILE",
                        help="YAML configuration file (or LINEGUARD_CONFIG)")
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS)


def add_output_file(parser: argparse.ArgumentParser, help: str) -> None:  # noqa: A002 - argparse's name
    """``--out FILE`` (``args.out``); ``--json FILE`` is its deprecated alias."""
    parser.add_argument("--out", metavar="FILE", help=help)
    parser.add_argument("--json", dest="out", action=_DeprecatedAlias, replacement="--out FILE")


def add_until_idle(parser: argparse.ArgumentParser, help: str) -> None:  # noqa: A002 - argparse's name
    """``--until-idle SECONDS`` (``args.until_idle``, None when not given); ``--idle-exit`` is its alias."""
    parser.add_argument("--until-idle", type=float, metavar="SECONDS", default=None, help=help)
    parser.add_argument("--idle-exit", dest="until_idle", type=float, action=_DeprecatedAlias,
                        replacement="--until-idle SECONDS")


def parse_line_ids(value: str | None, allow_all: bool = False) -> list[str] | None:
    """``--lines``: comma-separated line ids, each checked; None for no value (or ``all`` where allowed)."""
    from .config import ConfigError
    from .schemas import topics

    if value is None or (allow_all and value.strip() == "all"):
        return None
    lines = [part.strip() for part in value.split(",") if part.strip()]
    if not lines:
        raise ConfigError("--lines needs line ids" + (" or 'all'" if allow_all else ""))
    for line in lines:
        try:
            topics.check_line_id(line)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return lines


_RELATIVE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time_ns(value: str) -> int:
    """``--since`` / ``--until`` of replay and rescore: an ISO time (UTC unless it says otherwise), ``now``,
    or a span ago (``90s``, ``30m``, ``12h``, ``7d``); nanoseconds since the epoch, as frames carry them."""
    import datetime as dt
    import time

    text = value.strip()
    if text == "now":
        return time.time_ns()
    unit = _RELATIVE_UNITS_S.get(text[-1:])
    if unit and text[:-1].replace(".", "", 1).isdigit():
        return time.time_ns() - int(float(text[:-1]) * unit * 1e9)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an ISO time (2024-05-06T07:00), now, "
                                         "or a span ago (90s, 30m, 12h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1e9)
