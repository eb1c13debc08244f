"""The one command line: ``lineguard <subcommand>``; each subcommand lives beside the code it runs.

Every folder that owns a subcommand exposes ``register(subparsers)`` in its
``cli.py``; this module only assembles them, loads the settings and sets up
logging, so ``lineguard --help`` stays fast (heavy imports happen in the
handlers).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

from .cli_options import add_global_options
from .config import ConfigError, load_settings
from .logs import setup_logging

# (module providing register(subparsers)) in the order --help lists them.
_COMMAND_MODULES = (
    "lineguard.deploy.cli",       # stack up|down|status
    "lineguard.producers.cli",    # produce
    "lineguard.processors.cli",   # process
    "lineguard.sinks.cli",        # sink
    "lineguard.engines.cli",      # train, eval, export
    "lineguard.demo",             # demo
    "lineguard.benchmarks.cli",   # bench engine|pipeline|anomalib
    "lineguard.analytics.cli",    # report, roi
    "lineguard.api.cli",          # serve, tail
    "lineguard.inspection.cli",   # models push|list|promote|rollback|update-bank
    "lineguard.gates.cli",        # gate opcua|mqtt
)


class _SubcommandParser(argparse.ArgumentParser):
    """Every subcommand (nested ones too: ``add_subparsers`` inherits the class) takes the global options,
    so ``lineguard demo --log-level DEBUG`` works as ``lineguard --log-level DEBUG demo`` does."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - ArgumentParser's
        super().__init__(*args, **kwargs)
        add_global_options(self, default=argparse.SUPPRESS)


def _version() -> str:
    try:
        return metadata.version("lineguard")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lineguard {_version()}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_SubcommandParser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("lineguard"):
                continue  # a part not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"lineguard: {exc}", file=sys.stderr)
        return 2
    if args.log_level:
        settings.log_level = args.log_level
    setup_logging(settings.log_level, settings.log_format)
    try:
        return int(args.handler(args, settings) or 0)
    except ConfigError as exc:
        print(f"lineguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
