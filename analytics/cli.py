"""``lineguard report``, ``lineguard roi`` and ``lineguard dataset export``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from .dataset import register_dataset
    from .report import register_report
    from .roi import register_roi

    register_report(sub)
    register_roi(sub)
    register_dataset(sub)
