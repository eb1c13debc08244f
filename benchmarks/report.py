"""What every benchmark writes beside ``--out FILE``: the JSON, a Markdown table and, where a curve says
more, a PNG plot; and the one matplotlib set-up those plots share."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(result: dict[str, Any], json_path: str | Path | None, markdown: Callable[[dict[str, Any]], str],
                 plot: Callable[[dict[str, Any], Path], None] | None = None) -> None:
    """``FILE`` (JSON), ``FILE.md`` and, with ``plot``, ``FILE.png``; nothing without a path."""
    if not json_path:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    path.with_suffix(".md").write_text(markdown(result) + "\n")
    if plot is not None:
        plot(result, path.with_suffix(".png"))


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (benchmarks run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
