"""The Prometheus rules and the Grafana dashboard under config/: well-formed, and
speaking only of metrics the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway.observe.slo as slo
from gateway.observe.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "config" / "prometheus"
RULE_FILES = [PROMETHEUS / "recording-rules.yaml", PROMETHEUS / "alerts.yaml"]
DASHBOARD = ROOT / "config" / "grafana" / "gateway-dashboard.json"

# docs/contracts.md#metrics: the metric names are a contract, even while some are still
# being wired in; (name, type).
CONTRACT_METRICS = [
    ("gateway_requests_total", "counter"),
    ("gateway_request_duration_seconds", "histogram"),
    ("gateway_backend_duration_seconds", "histogram"),
    ("gateway_queue_duration_seconds", "histogram"),
    ("gateway_batch_size", "histogram"),
    ("gateway_inflight_requests", "gauge"),
    ("gateway_shed_total", "counter"),
    ("gateway_fallbacks_total", "counter"),
    ("gateway_cache_requests_total", "counter"),
    ("gateway_circuit_open", "gauge"),
    ("gateway_cost_usd_total", "counter"),
    ("gateway_tokens_total", "counter"),
    ("gateway_slo_error_budget_remaining", "gauge"),
    ("gateway_slo_burn_rate", "gauge"),
    ("gateway_overhead_seconds", "histogram"),
]
SERIES_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def exported_series() -> set[str]:
    """Every series name the gateway can expose: its registry's metrics (slo.py's
    included, imported above) and the §1.7 contract, with their sample suffixes."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        base = family.name
        if family.type == "counter" and not base.endswith("_total"):
            base += "_total"
        for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
            names.add(base if family.type == "counter" else base + suffix)
    for name, kind in CONTRACT_METRICS:
        for suffix in SERIES_SUFFIXES[kind]:
            names.add(name if kind == "counter" else name + suffix)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (Grafana variables allowed)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # $__rate_interval, ${var}
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def rule_files() -> dict[Path, dict[str, Any]]:
    return {path: yaml.safe_load(path.read_text()) for path in RULE_FILES}


def all_rules() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path, doc in rule_files().items():
        for group in doc["groups"]:
            for rule in group["rules"]:
                yield path, group["name"], rule


def recorded_names() -> set[str]:
    return {rule["record"] for _, _, rule in all_rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
        else:
            panels.append(panel)
    return panels


# -- the checker checks -----------------------------------------------------------


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(gateway_x_bucket{code=~"5..", '
        'model=~"$model"}[$__rate_interval]))) / on (model) group_left '
        "(1 - max by (model) (job:y:rate5m offset 1h)) > bool 0.5 and z"
    )
    assert metric_names(expr) == {"gateway_x_bucket", "job:y:rate5m", "z"}


def test_the_exported_set_includes_histogram_and_counter_series() -> None:
    names = exported_series()
    for name in (
        "gateway_batch_size_bucket",
        "gateway_shed_total",
        "gateway_queued_requests",
        "gateway_slo_burn_rate",
        "gateway_slo_objective",
        "gateway_request_duration_seconds_count",
    ):
        assert name in names
    assert "gateway_shed_total_total" not in names and "gateway_shed" not in names


# -- rule files -------------------------------------------------------------------


def test_rule_files_have_the_prometheus_structure() -> None:
    for path, doc in rule_files().items():
        assert set(doc) == {"groups"}, path
        names = [group["name"] for group in doc["groups"]]
        assert len(names) == len(set(names)), f"{path}: duplicate group names"
        for group in doc["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
            assert "interval" not in group or DURATION.match(group["interval"])
            assert group["rules"], group["name"]
            for rule in group["rules"]:
                where = f"{path.name}: {group['name']}: {rule.get('record') or rule.get('alert')}"
                assert set(rule) <= RULE_KEYS, where
                assert ("record" in rule) != ("alert" in rule), where
                assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
                for key in ("labels", "annotations"):
                    for name, value in rule.get(key, {}).items():
                        assert LABEL_NAME.match(name) and isinstance(value, str), where
                if "record" in rule:
                    assert METRIC_NAME.match(rule["record"]) and ":" in rule["record"], where
                    assert not {"for", "annotations"} & set(rule), where
                else:
                    assert DURATION.match(rule.get("for", "0s")), where
                    assert rule["labels"]["severity"] in {"page", "ticket"}, where
                    assert {"summary", "description"} <= set(rule["annotations"]), where


def test_rules_only_use_exported_metrics_and_recorded_series() -> None:
    allowed = exported_series() | recorded_names()
    unknown = {
        f"{path.name}: {rule.get('record') or rule.get('alert')}: {name}"
        for path, _, rule in all_rules()
        for name in metric_names(rule["expr"]) - allowed
    }
    assert not unknown
    records = [rule["record"] for _, _, rule in all_rules() if "record" in rule]
    assert len(records) == len(set(records))


def test_recording_rules_cover_the_operational_signals() -> None:
    used = set().union(*(metric_names(rule["expr"]) for _, _, rule in all_rules()))
    for name in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_shed_total",
        "gateway_fallbacks_total",
        "gateway_cache_requests_total",
        "gateway_cost_usd_total",
    ):
        assert name in used, name


def test_burn_rate_alerts_match_the_trackers_pairs() -> None:
    alerts = [
        rule for path, _, rule in all_rules() if path.name == "alerts.yaml" and "alert" in rule
    ]
    for kind in slo.SLO_KINDS:
        for short, long, threshold, _status in slo.ALERT_PAIRS:
            matching = [
                rule
                for rule in alerts
                if rule["labels"].get("short_window") == short
                and rule["labels"].get("long_window") == long
                and f'slo="{kind}"' in rule["expr"]
            ]
            assert len(matching) == 1, (kind, short, long)
            expr = matching[0]["expr"]
            assert f'window="{short}"' in expr and f'window="{long}"' in expr
            assert re.findall(r">=\s*([\d.]+)", expr) == [f"{threshold:g}"] * 2
            assert "gateway_slo_burn_rate" in expr
            # Page on the two fast pairs, ticket on the slow ones (the SRE workbook).
            expected = "page" if (short, long) in {("5m", "1h"), ("30m", "6h")} else "ticket"
            assert matching[0]["labels"]["severity"] == expected


# -- the dashboard ----------------------------------------------------------------


def test_the_dashboard_is_templated_on_datasource_and_model() -> None:
    doc = dashboard()
    assert 36 <= doc["schemaVersion"] <= 41
    assert doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "${datasource}"
    assert model["includeAll"] and model["multi"]


def test_every_panel_has_a_datasource_and_targets() -> None:
    doc = dashboard()
    variables = {v["name"] for v in doc["templating"]["list"]}
    panels = data_panels(doc)
    ids = [panel["id"] for panel in doc["panels"]] + [
        p["id"] for row in doc["panels"] if row["type"] == "row" for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], title
            for var in re.findall(r"\$(?!__)\{?(\w+)", target["expr"]):
                assert var in variables, f"{title}: ${var} is not a template variable"


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_uses_only_exported_metrics_and_covers_them() -> None:
    allowed = exported_series() | recorded_names()
    used: set[str] = set()
    for panel in data_panels(dashboard()):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            assert names <= allowed, f"{panel['title']}: {names - allowed}"
            used |= names
    for name in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_shed_total",
        "gateway_fallbacks_total",
        "gateway_circuit_open",
        "gateway_cache_requests_total",
        "gateway_batch_size_bucket",
        "gateway_queue_duration_seconds_bucket",
        "gateway_cost_usd_total",
        "gateway_tokens_total",
        "gateway_slo_error_budget_remaining",
        "gateway_slo_burn_rate",
        "gateway_overhead_seconds_bucket",
    ):
        assert name in used, f"no panel shows {name}"


# -- promtool, when installed (Debian: apt-get install prometheus) ------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def promtool(*args: str) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    promtool("check", "rules", *map(str, RULE_FILES))


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    promtool("test", "rules", str(PROMETHEUS / "tests" / "alerts_test.yaml"))


@needs_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    # Grafana's variables replaced by what they expand to, then checked as rules.
    rules = []
    for panel in data_panels(dashboard()):
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$model", ".*")
                .replace("$backend", ".*")
            )
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))
