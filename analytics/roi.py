"""``lineguard roi``: what automated inspection saves against manual inspection, and when it pays back.

The model, per year (every input is a flag; the defect rate and throughput are
measured from ClickHouse when there are verdicts, unless a flag gives them):

    units            = units_per_hour x hours_per_day x days_per_year
    manual cost      = units x inspection_rate x manual_cost_per_unit
    automated cost   = units x automated_cost_per_unit + annual_maintenance
    escapes (manual) = units x defect_rate x (1 - inspection_rate x manual_detection_rate)
    escapes (auto)   = units x defect_rate x (1 - automated_detection_rate)
    escape cost      = escapes x cost_per_escape
    annual savings   = (manual cost + manual escape cost) - (automated cost + automated escape cost)
    investment       = hardware_cost + integration_cost
    payback months   = investment / (annual savings / 12)        (never, if savings <= 0)

``inspection_rate`` is the share of units people inspect today (1.0 = every unit,
0.1 = a 10 % sample); the automated line inspects every unit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lineguard.config import Settings


@dataclass(frozen=True)
class RoiInputs:
    units_per_hour: float
    defect_rate: float
    hours_per_day: float = 16.0
    days_per_year: float = 250.0
    inspection_rate: float = 1.0
    manual_cost_per_unit: float = 0.05
    manual_detection_rate: float = 0.80
    automated_cost_per_unit: float = 0.002
    automated_detection_rate: float = 0.95
    cost_per_escape: float = 25.0
    hardware_cost: float = 15_000.0
    integration_cost: float = 20_000.0
    annual_maintenance: float = 3_000.0
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # input -> "measured"/"flag"/"default"

    def __post_init__(self) -> None:
        for name in ("defect_rate", "inspection_rate", "manual_detection_rate", "automated_detection_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        for name in ("units_per_hour", "hours_per_day", "days_per_year", "manual_cost_per_unit",
                     "automated_cost_per_unit", "cost_per_escape", "hardware_cost", "integration_cost",
                     "annual_maintenance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.hours_per_day > 24 or self.days_per_year > 366:
            raise ValueError("hours_per_day must be <= 24 and days_per_year <= 366")


@dataclass(frozen=True)
class RoiResult:
    units_per_year: float
    manual_cost: float
    automated_cost: float
    manual_escapes: float
    automated_escapes: float
    manual_escape_cost: float
    automated_escape_cost: float
    annual_savings: float
    investment: float
    payback_months: float  # math.inf when it never pays back
    three_year_net: float


def compute(i: RoiInputs) -> RoiResult:
    units = i.units_per_hour * i.hours_per_day * i.days_per_year
    manual_cost = units * i.inspection_rate * i.manual_cost_per_unit
    automated_cost = units * i.automated_cost_per_unit + i.annual_maintenance
    defects = units * i.defect_rate
    manual_escapes = defects * (1.0 - i.inspection_rate * i.manual_detection_rate)
    automated_escapes = defects * (1.0 - i.automated_detection_rate)
    manual_escape_cost = manual_escapes * i.cost_per_escape
    automated_escape_cost = automated_escapes * i.cost_per_escape
    savings = (manual_cost + manual_escape_cost) - (automated_cost + automated_escape_cost)
    investment = i.hardware_cost + i.integration_cost
    payback = investment / (savings / 12.0) if savings > 0 else math.inf
    return RoiResult(units, manual_cost, automated_cost, manual_escapes, automated_escapes,
                     manual_escape_cost, automated_escape_cost, savings, investment, payback,
                     3 * savings - investment)


def measure(settings: Settings, since: dt.datetime, until: dt.datetime, line: str | None,
            frames_per_unit: float = 1.0) -> dict[str, float] | None:
    """Defect rate and units per running hour from ClickHouse, or None without verdicts."""
    from lineguard.stores import open_store

    from .cookbook import micros

    with open_store(settings) as store:
        store.create_schema()
        rows = store.query(
            f"""
            SELECT count() AS frames, countIf(is_defective) AS defective,
                   uniqExact(toStartOfHour(captured_at)) AS running_hours
            FROM {store.database}.verdicts_latest
            WHERE captured_at >= fromUnixTimestamp64Micro({{since_us:Int64}}, 'UTC')
              AND captured_at < fromUnixTimestamp64Micro({{until_us:Int64}}, 'UTC')
              AND ({{line_id:String}} = '' OR line_id = {{line_id:String}})
            """,
            {"since_us": micros(since), "until_us": micros(until), "line_id": line or ""},
        )
    if not rows or not rows[0]["frames"]:
        return None
    r = rows[0]
    return {"defect_rate": r["defective"] / r["frames"],
            "units_per_hour": r["frames"] / frames_per_unit / max(r["running_hours"], 1),
            "frames": r["frames"], "running_hours": r["running_hours"]}


_FLAGS: dict[str, str] = {
    "units_per_hour": "units per running hour (default: measured)",
    "defect_rate": "defective share of units, 0..1 (default: measured)",
    "hours_per_day": "running hours per day",
    "days_per_year": "production days per year",
    "inspection_rate": "share of units inspected manually today, 0..1",
    "manual_cost_per_unit": "labour cost of one manual inspection",
    "manual_detection_rate": "share of defects a person catches, 0..1",
    "automated_cost_per_unit": "compute + energy per automated inspection",
    "automated_detection_rate": "share of defects the model catches, 0..1 (see lineguard eval)",
    "cost_per_escape": "cost of one defect that reaches a customer",
    "hardware_cost": "cameras, lighting, compute (one-off)",
    "integration_cost": "engineering, MES integration, commissioning (one-off)",
    "annual_maintenance": "support, retraining, spare parts per year",
}


def _table(inputs: RoiInputs, result: RoiResult) -> str:
    lines = ["Inputs", f"{'input':<28}{'value':>16}  source"]
    for name in _FLAGS:
        value = getattr(inputs, name)
        lines.append(f"{name:<28}{value:>16,.4f}  {inputs.sources.get(name, 'default')}")
    lines += ["", "Result (per year)", f"{'figure':<28}{'value':>16}"]
    for name, value in asdict(result).items():
        shown = "never" if value == math.inf else f"{value:,.2f}"
        lines.append(f"{name:<28}{shown:>16}")
    return "\n".join(lines)


def run_roi(args: argparse.Namespace, settings: Settings) -> int:
    from .cookbook import now

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    until = now() + dt.timedelta(seconds=1)
    since = until - dt.timedelta(days=args.days)
    measured = None
    if args.defect_rate is None or args.units_per_hour is None:
        try:
            measured = measure(settings, since, until, args.line, args.frames_per_unit)
        except Exception as exc:  # no ClickHouse reachable: say so, fall back to flags
            print(f"roi: could not measure from ClickHouse ({type(exc).__name__}: {exc})")
    for name in _FLAGS:
        flag = getattr(args, name)
        if flag is not None:
            values[name], sources[name] = flag, "flag"
        elif measured and name in ("defect_rate", "units_per_hour"):
            values[name], sources[name] = measured[name], "measured"
    missing = [n for n in ("defect_rate", "units_per_hour") if n not in values]
    if missing:
        print("lineguard roi: no verdicts to measure from; give " + " and ".join(f"--{n.replace('_', '-')}" for n in missing))
        return 2
    try:
        inputs = RoiInputs(**values, sources=sources)
    except ValueError as exc:
        print(f"lineguard roi: {exc}")
        return 2
    if measured:
        print(f"measured over {args.days:g} days{' on ' + args.line if args.line else ''}: "
              f"{measured['frames']} frames in {measured['running_hours']} running hours")
    print(_table(inputs, compute(inputs)))
    return 0


def register_roi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roi", help="annual savings and payback of automated inspection",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--line", help="measure one line only (default: all lines)")
    p.add_argument("--days", type=float, default=30.0, help="measurement window in days (default 30)")
    p.add_argument("--frames-per-unit", type=float, default=1.0,
                   help="frames per inspected unit (cameras seeing the same part)")
    for name, text in _FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, help=text)
    p.set_defaults(handler=run_roi)
