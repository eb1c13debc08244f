"""``lineguard report``, ``lineguard roi``, ``lineguard dataset export`` and ``lineguard recalibrate``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from .dataset import register_dataset
    from .recalibrate import register_recalibrate
    from .report import register_report
    from .roi import register_roi

    register_report(sub)
    register_roi(sub)
    register_dataset(sub)
    register_recalibrate(sub)
