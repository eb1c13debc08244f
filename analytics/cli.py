"""``lineguard report`` and ``lineguard roi``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from .report import register_report
    from .roi import register_roi

    register_report(sub)
    register_roi(sub)
