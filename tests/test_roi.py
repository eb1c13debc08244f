"""``lineguard roi``: the arithmetic on a hand-computed case, and measured inputs from ClickHouse."""

from __future__ import annotations

import math
import re

import pytest

from lineguard.analytics.roi import RoiInputs, compute
from lineguard.components import Component, component_env
from lineguard.stores import ChdbStore

from sink_fixtures import make_verdicts

# By hand: 100 units/h x 10 h x 200 days = 200,000 units a year, 2 % defective = 4,000 defects.
#   manual:    200,000 x 0.5 inspected x 0.10 = 10,000; escapes 4,000 x (1 - 0.5 x 0.8) = 2,400 -> x 5 = 12,000
#   automated: 200,000 x 0.01 + 1,000 maintenance = 3,000; escapes 4,000 x (1 - 0.95) = 200 -> x 5 = 1,000
#   savings (10,000 + 12,000) - (3,000 + 1,000) = 18,000 a year; investment 6,000 + 3,000 = 9,000
#   payback 9,000 / (18,000 / 12) = 6 months; three years: 3 x 18,000 - 9,000 = 45,000
HAND = dict(units_per_hour=100, hours_per_day=10, days_per_year=200, defect_rate=0.02, inspection_rate=0.5,
            manual_cost_per_unit=0.10, manual_detection_rate=0.8, automated_cost_per_unit=0.01,
            automated_detection_rate=0.95, cost_per_escape=5, hardware_cost=6000, integration_cost=3000,
            annual_maintenance=1000)


def test_hand_computed_case():
    r = compute(RoiInputs(**HAND))
    assert r.units_per_year == 200_000
    assert r.manual_cost == pytest.approx(10_000) and r.automated_cost == pytest.approx(3_000)
    assert r.manual_escapes == pytest.approx(2_400) and r.automated_escapes == pytest.approx(200)
    assert r.manual_escape_cost == pytest.approx(12_000) and r.automated_escape_cost == pytest.approx(1_000)
    assert r.annual_savings == pytest.approx(18_000) and r.investment == 9_000
    assert r.payback_months == pytest.approx(6.0) and r.three_year_net == pytest.approx(45_000)


def test_no_savings_never_pays_back_and_inputs_are_checked():
    r = compute(RoiInputs(**{**HAND, "manual_cost_per_unit": 0.0, "cost_per_escape": 0.0}))
    assert r.annual_savings == pytest.approx(-3_000) and math.isinf(r.payback_months)
    with pytest.raises(ValueError, match="defect_rate"):
        RoiInputs(**{**HAND, "defect_rate": 1.5})
    with pytest.raises(ValueError, match="hardware_cost"):
        RoiInputs(**{**HAND, "hardware_cost": -1})


def _flags(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_cli_prints_the_table_from_flags(tmp_path):
    env = component_env(None, tmp_path / "state")
    roi = Component(["roi", *_flags(HAND)], env, tmp_path / "roi.log")
    assert roi.wait(60) == 0, roi.output()
    out = roi.output()
    assert re.search(r"annual_savings\s+18,000\.00", out) and re.search(r"payback_months\s+6\.00", out), out
    assert re.search(r"defect_rate\s+0\.0200\s+flag", out)
    never = Component(["roi", *_flags({**HAND, "manual_cost_per_unit": 0, "cost_per_escape": 0})], env,
                      tmp_path / "never.log")
    assert never.wait(60) == 0 and re.search(r"payback_months\s+never", never.output())


def test_cli_measures_defect_rate_and_throughput_from_clickhouse(tmp_path):
    verdicts = make_verdicts(300, hours=3)  # three hours of 2024-05-06, 100 frames an hour
    store = ChdbStore(tmp_path / "chdb")
    try:
        store.create_schema()
        store.insert_verdicts(verdicts)
        store.insert_verdicts(verdicts[:40])  # a replay must not inflate the throughput
    finally:
        store.close()
    env = component_env(None, tmp_path / "state", LINEGUARD_SINKS__CLICKHOUSE__CHDB_PATH=str(tmp_path / "chdb"))
    given = {k: v for k, v in HAND.items() if k not in ("units_per_hour", "defect_rate")}
    roi = Component(["roi", "--days", "100000", *_flags(given)], env, tmp_path / "roi.log")
    assert roi.wait(60) == 0, roi.output()
    out = roi.output()
    rate = sum(v.is_defective for v in verdicts) / len(verdicts)
    hours = len({v.captured_at_ns // (3600 * 10**9) for v in verdicts})
    assert re.search(rf"defect_rate\s+{rate:,.4f}\s+measured", out), out
    assert re.search(rf"units_per_hour\s+{len(verdicts) / hours:,.4f}\s+measured", out), out
    expected = compute(RoiInputs(units_per_hour=len(verdicts) / hours, defect_rate=rate, **given))
    assert re.search(rf"annual_savings\s+{expected.annual_savings:,.2f}", out), out
    print("\n" + out)
    # Flags override the measurement; and nothing to measure without them is an error.
    empty = Component(["roi"], component_env(None, tmp_path / "empty"), tmp_path / "empty.log")
    assert empty.wait(60) == 2 and "no verdicts to measure" in empty.output()
