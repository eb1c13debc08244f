"""The alert rules: deploy/prometheus/alerts.yml passes ``promtool check rules`` and its unit tests
(``promtool test rules`` on tests/alerts/*_test.yml: every alert fires where it should and stays quiet
where it should not); every alert is labelled, annotated, documented and tested; the metric names the
rules read are the ones the code exports; and the Grafana-managed copy (deploy/grafana/provisioning/
alerting.yml) has the same alerts, thresholds, durations and severities, with queries promtool accepts.

promtool comes from Debian's prometheus package (`make promtool-deps`, tests/alerts/install.sh). Without
it the test is skipped, except in CI (CI=true), where a missing promtool fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = sorted((REPO / "tests" / "alerts").glob("*_test.yml"))
GRAFANA = REPO / "deploy" / "grafana" / "provisioning"
DOCS = REPO / "docs" / "deployment.md"
# Where the metrics are defined: the names the rules read must be declared in one of these.
METRIC_SOURCES = [REPO / "processors" / "metrics.py", REPO / "sinks" / "metrics.py", REPO / "api" / "drift_metrics.py"]
SEVERITIES = {"warning", "critical"}


def _promtool() -> str:
    extracted = REPO / ".cache" / "bin" / "promtool"  # `make promtool-deps`
    found = str(extracted) if extracted.is_file() else shutil.which("promtool")
    if found is None:
        message = "promtool is not installed: run `make promtool-deps` (tests/alerts/install.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must run the alert rule tests")
        pytest.skip(message)
    return found


def promtool(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([_promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    output = done.stdout + done.stderr
    print(f"$ promtool {' '.join(args)}\n{output}")
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _grafana_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "alerting.yml").read_text())
    assert doc["apiVersion"] == 1
    return {rule["title"]: rule for group in doc["groups"] for rule in group["rules"]}


def test_promtool_checks_the_rules_and_the_config_that_loads_them() -> None:
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out
    out = promtool("check", "config", "prometheus.yml", cwd=RULES.parent)  # rule_files: alerts.yml, beside it
    assert "1 rule files found" in out


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    out = promtool("test", "rules", *(p.name for p in RULE_TESTS), cwd=RULE_TESTS[0].parent)
    assert out.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_labelled_annotated_documented_and_tested_both_ways() -> None:
    alerts = _alerts()
    assert len(alerts) >= 7
    docs = DOCS.read_text()
    cases: dict[str, list[list]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert "docs/" in rule["annotations"]["runbook"], f"{name}: the runbook names no docs page"
        assert f"`{name}`" in docs, f"{name} is not described in docs/deployment.md#alerts"
        assert any(cases.get(name, [])), f"{name}: no test case where it fires"
        assert any(not exp for exp in cases.get(name, [])), f"{name}: no test case where it stays quiet"


def _metric_names(expr: str) -> set[str]:
    """The lineguard_* series an expression reads (recording rules' names, with a ':', are not metrics)."""
    return set(re.findall(r"(?<![:\w])lineguard_[a-z_]+", expr))


def test_the_rules_read_metrics_the_code_exports() -> None:
    declared = "\n".join(p.read_text() for p in METRIC_SOURCES)
    exprs = [rule["expr"] for rule in _rules()]
    exprs += [q["model"]["expr"] for rule in _grafana_rules().values() for q in rule["data"] if "expr" in q["model"]]
    for name in set().union(*map(_metric_names, exprs)):
        base = name.removesuffix("_total")  # prometheus_client adds _total to a Counter's name
        assert f'"{base}"' in declared, f"alert rules read {name}, which no lineguard component exports"


def _for_seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def test_grafana_alerting_matches_the_prometheus_rules() -> None:
    alerts, grafana = _alerts(), _grafana_rules()
    assert grafana.keys() == alerts.keys()
    sources = yaml.safe_load((GRAFANA / "datasources.yml").read_text())["datasources"]
    prometheus_uid = next(s["uid"] for s in sources if s["type"] == "prometheus")
    uids = [rule["uid"] for rule in grafana.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)
    thresholds = re.compile(r"(>=|>|==|<)\s*([0-9.]+)\s*$")
    for title, rule in grafana.items():
        alert = alerts[title]
        assert _for_seconds(rule["for"]) == _for_seconds(alert["for"]), title
        assert rule["labels"]["severity"] == alert["labels"]["severity"], title
        refs = {q["refId"]: q for q in rule["data"]}
        assert rule["condition"] in refs and refs["A"]["datasourceUid"] == prometheus_uid, title
        condition = refs[rule["condition"]]["model"]
        assert condition["type"] == "threshold" and condition["expression"] == "A", title
        (evaluator,) = [c["evaluator"] for c in condition["conditions"]]
        # The Prometheus rule's threshold appears in its expression: the Grafana rule uses the same number
        # (the camera rule's "== 0" on a whole count is Grafana's "< 1").
        numbers = {float(m[2]) for line in alert["expr"].splitlines() if (m := thresholds.search(line.strip()))}
        if evaluator["type"] == "gt":
            assert evaluator["params"][0] in numbers, f"{title}: Grafana threshold {evaluator} not in {alert['expr']}"
        else:
            assert evaluator == {"type": "lt", "params": [1]} and numbers == {0.0}, title


def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no PromQL checker of its own: the queries go through `check rules` as recording rules.
    rules = [{"record": f"grafana:query_{i}", "expr": q["model"]["expr"]}
             for i, rule in enumerate(_grafana_rules().values()) for q in rule["data"] if "expr" in q["model"]]
    path = tmp_path / "grafana_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    promtool("check", "rules", str(path))
