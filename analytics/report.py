"""``lineguard report``: the cookbook's figures as tables on stdout and charts as PNG files.

It first makes sure the analytics views exist and loads the calibration
reference of every model folder it is given (``--model-dir``, repeatable;
default ``processor.model_dir``) into ``model_references``, so the drift figures
cover the models in service and any archived versions still in the data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lineguard.config import Settings
from lineguard.stores import VerdictStore

from . import cookbook
from .schema import create_analytics_schema, load_model_references

UTC = dt.timezone.utc


def parse_time(text: str) -> dt.datetime:
    """ISO date or date-time (UTC unless it says otherwise), or a relative ``7d`` / ``12h``."""
    text = text.strip()
    if text[-1:] in ("d", "h") and text[:-1].replace(".", "", 1).isdigit():
        amount = float(text[:-1])
        return cookbook.now() - (dt.timedelta(days=amount) if text[-1] == "d" else dt.timedelta(hours=amount))
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an ISO time (2024-05-06T07:00) or 7d / 12h") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
          footer: dict[str, Any] | None = None) -> str:
    """A fixed-width text table; ``columns`` are (key, header) pairs."""
    body = [[_fmt(r.get(key, "")) for key, _ in columns] for r in rows]
    if footer:
        body.append([_fmt(footer.get(key, "")) for key, _ in columns])
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]
    out = [title, "-" * len(title)]
    out.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for row in body:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if not rows:
        out.append("(no data)")
    return "\n".join(out) + "\n"


def _pct(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    return [{**r, **{f"{k}_pct": 100.0 * r[k] for k in keys}} for r in rows]


def _psi_flag(psi: float) -> str:
    return "drift" if psi > 0.25 else "watch" if psi > 0.1 else "ok"


class Report:
    """Runs the cookbook queries once; prints and charts from the same rows."""

    def __init__(self, store: VerdictStore, since: dt.datetime, until: dt.datetime, shifts: list[str],
                 week_since: dt.datetime, line: str | None = None, product: str = "",
                 change_at: dt.datetime | None = None, versions: tuple[str, str] | None = None) -> None:
        window = {"since": since, "until": until}
        self.since, self.until = since, until
        self.grain = "day" if until - since > dt.timedelta(days=3) else "hour"
        run = lambda name, **kw: cookbook.run(store, name, **kw)  # noqa: E731
        self.models = run("line_models", **window)
        self.shifts = run("defect_rate_by_shift", shifts=shifts, **window)
        self.worst = run("worst_cameras", since=week_since, until=until)
        self.week_since = week_since
        self.pareto = run("defect_pareto_by_product", **window)
        self.rates = run("defect_rate_by_line", grain=self.grain, **window)
        self.drift = run("drift_psi", grain=self.grain, **window)
        self.shift_change: list[dict[str, Any]] = []
        self.shift_title = ""
        if line and versions:
            self.shift_change = run("score_shift_by_version", line_id=line, product=product,
                                    before_version=versions[0], after_version=versions[1], **window)
            self.shift_title = f"Score distribution of two model versions on {line}: {versions[0]} -> {versions[1]}"
        elif line and change_at:
            self.shift_change = run("score_shift_at", line_id=line, product=product, at=change_at, **window)
            self.shift_title = f"Score distribution before/after {change_at:%Y-%m-%d %H:%M} UTC on {line}"

    def text(self) -> str:
        parts = [f"lineguard report: {self.since:%Y-%m-%d %H:%M} .. {self.until:%Y-%m-%d %H:%M} UTC\n"]
        parts.append(table("Model version per line", _pct(self.models, "defect_rate"), [
            ("line_id", "line"), ("model_name", "model"), ("model_version", "version"),
            ("last_frame_at", "last frame (UTC)"), ("frames", "frames"), ("defective", "defective"),
            ("defect_rate_pct", "defect %")]))
        parts.append(table("Defect rate per line per shift", _pct(self.shifts, "defect_rate"), [
            ("line_id", "line"), ("shift_date", "date"), ("shift", "shift (UTC)"), ("frames", "frames"),
            ("defective", "defective"), ("defect_rate_pct", "defect %")]))
        parts.append(table(f"Worst cameras since {self.week_since:%Y-%m-%d %H:%M} UTC",
                           _pct(self.worst, "defect_rate"), [
            ("camera_id", "camera"), ("frames", "frames"), ("defective", "defective"), ("line_id", "line"),
            ("defect_rate_pct", "defect %"), ("mean_score", "mean score")]))
        frames = sum(r["frames"] for r in self.pareto)
        defective = sum(r["defective"] for r in self.pareto)
        parts.append(table("Pareto of defects by product", _pct(self.pareto, "defect_rate", "share", "cumulative_share"), [
            ("product", "product"), ("frames", "frames"), ("defective", "defective"),
            ("defect_rate_pct", "defect %"), ("share_pct", "share %"), ("cumulative_share_pct", "cumulative %")],
            footer={"product": "total", "frames": frames, "defective": defective,
                    "defect_rate_pct": 100.0 * defective / frames if frames else float("nan")}))
        parts.append(table(f"Score drift per line (PSI of normal-judged scores vs calibration, per {self.grain})",
                           [{**r, "flag": _psi_flag(r["psi"])} for r in self.drift], [
            ("line_id", "line"), ("period", self.grain), ("model_name", "model"), ("model_version", "version"),
            ("frames", "normal frames"),
            ("psi", "PSI"), ("flag", "flag")]))
        if self.shift_title:
            parts.append(table(self.shift_title, self.shift_change, [
                ("side", "side"), ("frames", "frames"), ("defect_rate", "defect rate"), ("mean_score", "mean"),
                ("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("psi_vs_before", "PSI vs before")]))
        return "\n".join(parts)

    def charts(self, out_dir: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt

        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []

        def save(fig, name: str) -> None:  # noqa: ANN001
            fig.tight_layout()
            path = out_dir / name
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)

        fig, ax = plt.subplots(figsize=(9, 4))
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rates:
            series[r["line_id"]].append(r)
        for line, rows in sorted(series.items()):
            ax.plot([r["period"] for r in rows], [100 * r["defect_rate"] for r in rows], marker="o", label=line)
        ax.set_title(f"Defect rate per line (per {self.grain})")
        ax.set_ylabel("defect %")
        ax.grid(alpha=0.3)
        if series:
            ax.legend()
        fig.autofmt_xdate()
        save(fig, "defect_rate_by_line.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for r in self.shifts:
            totals[(r["line_id"], r["shift"])][0] += r["frames"]
            totals[(r["line_id"], r["shift"])][1] += r["defective"]
        lines = sorted({k[0] for k in totals})
        shift_names = list(dict.fromkeys(r["shift"] for r in self.shifts))
        width = 0.8 / max(len(shift_names), 1)
        for j, shift in enumerate(shift_names):
            rates = [100 * totals[(l, shift)][1] / totals[(l, shift)][0] if totals[(l, shift)][0] else 0 for l in lines]
            ax.bar([i + j * width for i in range(len(lines))], rates, width, label=f"shift {shift}")
        ax.set_xticks([i + width * (len(shift_names) - 1) / 2 for i in range(len(lines))], lines)
        ax.set_title("Defect rate per line and shift (UTC)")
        ax.set_ylabel("defect %")
        if shift_names:
            ax.legend()
        save(fig, "defect_rate_by_shift.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        worst = list(reversed(self.worst))
        ax.barh([f"{r['line_id']} / {r['camera_id']}" for r in worst], [100 * r["defect_rate"] for r in worst],
                color="tab:red")
        ax.set_title(f"Worst cameras since {self.week_since:%Y-%m-%d}")
        ax.set_xlabel("defect %")
        save(fig, "worst_cameras.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar([r["product"] for r in self.pareto], [r["defective"] for r in self.pareto], color="tab:orange")
        ax.set_ylabel("defective frames")
        twin = ax.twinx()
        twin.plot([r["product"] for r in self.pareto], [100 * r["cumulative_share"] for r in self.pareto],
                  color="tab:blue", marker="o")
        twin.set_ylim(0, 105)
        twin.set_ylabel("cumulative %")
        ax.set_title("Pareto of defects by product")
        save(fig, "pareto_products.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        drift: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.drift:
            drift[f"{r['line_id']} {r['model_name']} {r['model_version']}"].append(r)
        for label, rows in sorted(drift.items()):
            ax.plot([r["period"] for r in rows], [r["psi"] for r in rows], marker="o", label=label)
        ax.axhline(0.1, color="goldenrod", linestyle="--", linewidth=1, label="watch (0.1)")
        ax.axhline(0.25, color="red", linestyle="--", linewidth=1, label="drift (0.25)")
        ax.set_title(f"Score drift vs calibration reference (PSI per {self.grain})")
        ax.set_ylabel("PSI")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        save(fig, "drift_psi.png")

        if len(self.shift_change) == 2:
            fig, ax = plt.subplots(figsize=(9, 4))
            bins = range(1, len(self.shift_change[0]["observed"]) + 1)
            for r, offset in zip(self.shift_change, (-0.2, 0.2)):
                ax.bar([b + offset for b in bins], [100 * o for o in r["observed"]], 0.4,
                       label=f"{r['side']} ({r['frames']} frames)")
            ax.set_xlabel("decile of the 'before' scores")
            ax.set_ylabel("% of frames")
            ax.set_title(self.shift_title, fontsize=10)
            ax.legend()
            save(fig, "score_shift.png")
        return written


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.stores import ChdbPathInUseError, open_store

    if args.list or args.sql:
        for name, query in cookbook.QUERIES.items():
            if args.list:
                print(f"{name:<28}{query.title}")
            elif name == args.sql:
                print(f"-- {query.title}\n-- {query.description}\n{query.render(settings.sinks.clickhouse.database).strip()}")
                return 0
        if args.sql:
            print(f"lineguard report: no query {args.sql!r}; see --list")
            return 2
        return 0
    until = args.until or cookbook.now() + dt.timedelta(seconds=1)
    since = args.since or until - dt.timedelta(days=7)
    if since >= until:
        print("lineguard report: --since must be before --until")
        return 2
    versions = tuple(args.versions.split(",", 1)) if args.versions else None
    if versions is not None and len(versions) != 2:
        print("lineguard report: --versions needs BEFORE,AFTER")
        return 2
    shifts = args.shifts.split(",") if args.shifts else settings.analytics.shifts
    try:
        cookbook.parse_shifts(shifts)
    except ValueError as exc:
        print(f"lineguard report: --shifts: {exc}")
        return 2
    try:
        store = open_store(settings)
    except ChdbPathInUseError as exc:  # a running chdb sink holds the data
        print(f"lineguard report: {exc}")
        return 2
    with store:
        create_analytics_schema(store)
        loaded = []
        for model_dir in args.model_dir or [settings.processor.model_dir]:
            loaded += load_model_references(store, model_dir)
        report = Report(store, since, until, shifts, args.since or cookbook.start_of_week(), args.line,
                        args.product or "", args.change_at, versions)  # type: ignore[arg-type]
    refs = ", ".join(sorted(f"{r.model_name} {r.model_version}" for r in loaded)) or "none"
    print(f"calibration references loaded: {refs}")
    print(report.text())
    if args.png_dir:
        for path in report.charts(args.png_dir):
            print(f"chart: {path}")
    return 0


def register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="defect and drift figures from ClickHouse as tables and PNG charts",
                       description="Run the SQL cookbook over the verdicts in ClickHouse and print the "
                                   "figures; --png-dir also writes charts.")
    p.add_argument("--since", type=parse_time, help="start (ISO UTC time, or 7d / 12h ago; default 7 days ago; "
                                                    "the worst-cameras table defaults to this week)")
    p.add_argument("--until", type=parse_time, help="end (default now)")
    p.add_argument("--png-dir", type=Path, help="write PNG charts to this folder")
    p.add_argument("--model-dir", type=Path, action="append",
                   help="model folder(s) whose calibration references to load (repeatable; "
                        "default processor.model_dir)")
    p.add_argument("--shifts", help="comma-separated UTC shifts, e.g. 06-14,14-22,22-06 (default analytics.shifts)")
    p.add_argument("--line", help="line for the before/after score comparison")
    p.add_argument("--product", help="product for the before/after comparison (default: all)")
    p.add_argument("--change-at", type=parse_time, help="compare scores before/after this time (a process change)")
    p.add_argument("--versions", help="BEFORE,AFTER model versions to compare (a model change)")
    p.add_argument("--list", action="store_true", help="list the cookbook queries and exit")
    p.add_argument("--sql", metavar="NAME", help="print the SQL of a cookbook query and exit")
    p.set_defaults(handler=run_report)
