"""Every alert has a runbook entry (docs/runbooks.md), linked from its
`runbook_url` annotation, that says what it means, how to confirm it and what
to do; and the budget alerts read the gauges the budget module exports. (What
the rules fire on is tested by promtool: config/prometheus/tests/.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.routing import budget
from tests.test_docs import _anchors, _sections

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def alerts() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_links_its_runbook_entry() -> None:
    anchors = _anchors(RUNBOOKS)
    entries = dict(_sections(RUNBOOKS.read_text()))
    names = {rule["alert"] for rule in alerts()}
    assert {"GatewayTenantBudgetThreshold", "GatewayTenantBudgetExhausted"} <= names
    for rule in alerts():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbooks.md has no '## {name}'"
        for part in ("**Means**", "**Confirm**", "**Act**"):
            assert part in entries[name], f"{name}: its runbook entry has no {part}"


def test_budget_alerts_read_the_exported_gauges() -> None:
    rules = {rule["alert"]: rule for rule in alerts()}
    threshold = rules["GatewayTenantBudgetThreshold"]["expr"]
    assert budget.SPENT_RATIO._name in threshold and budget.ALERT_THRESHOLD._name in threshold
    assert set(budget.ALERT_THRESHOLD._labelnames) == {"tenant", "period", "threshold"}
    exhausted = rules["GatewayTenantBudgetExhausted"]["expr"]
    assert re.fullmatch(
        r"max by \(tenant, period\) \(gateway_budget_spent_ratio\) >= 1\s*", exhausted
    )
