"""deploy/: the Prometheus alerts and the Grafana dashboard use only the metrics docs/metrics.md promises.

``promtool`` (Debian: ``apt-get install prometheus``) checks the rules and runs unit tests of the main alerts
when it is installed; the structure and the metric names are checked always.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "fleet.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def known_metrics() -> set[str]:
    """Every series name docs/metrics.md lists (histograms with their _bucket/_sum/_count series)."""
    names: set[str] = set()
    for match in re.finditer(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(\w+)\s*\|", METRICS_DOC.read_text(), re.M):
        name, kind = match.group(1), match.group(2)
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0) in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def test_metric_name_parser() -> None:
    expr = 'sum by (le, method) (rate(captcha_fleet_x_bucket{error_class="a b"}[$__rate_interval])) > 0.1 and on() up'
    assert metric_names(expr) == {"captcha_fleet_x_bucket", "up"}
    assert "captcha_fleet_backlog" in known_metrics()
    assert "captcha_fleet_task_latency_seconds_bucket" in known_metrics()


# --- alerts -----------------------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alerts_structure() -> None:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(data["groups"], list) and data["groups"]
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for group in data["groups"]:
        assert group["name"] and group["rules"]
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
    # The five the issue asks for.
    for wanted in (
        "CaptchaFleetBalanceLow",
        "CaptchaFleetQueueNotDraining",
        "CaptchaFleetCapacityErrorsHigh",
        "CaptchaFleetNoLeader",
        "CaptchaFleetWorkerHeartbeatsMissing",
    ):
        assert wanted in names


def test_alerts_use_only_documented_metrics() -> None:
    known = known_metrics()
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: {sorted(unknown)} not in docs/metrics.md"


def test_every_runbook_anchor_exists() -> None:
    if not OPERATIONS_DOC.exists():
        pytest.skip("docs/operations.md not written yet")
    headings = re.findall(r"^#+\s+(.+?)\s*$", OPERATIONS_DOC.read_text(encoding="utf-8"), re.M)
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/operations.md"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [PROMTOOL or "promtool", "check", "rules", str(ALERTS)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def series(name: str, labels: str, values: str) -> dict[str, str]:
    """One input series of a promtool rule test (``labels`` as PromQL writes them)."""
    return {"series": f"{name}{{{labels}}}", "values": values}


def silent(alertname: str, eval_time: str) -> dict[str, Any]:
    """``alertname`` must not fire at ``eval_time``."""
    return {"eval_time": eval_time, "alertname": alertname, "exp_alerts": []}


def fires(alertname: str, eval_time: str, severity: str, summary: str) -> dict[str, Any]:
    """``alertname`` fires at ``eval_time`` with this severity, summary and its runbook's anchor."""
    annotations = {"summary": summary, "runbook": f"docs/operations.md#{alertname.lower()}"}
    alert = {"exp_labels": {"severity": severity}, "exp_annotations": annotations}
    return {"eval_time": eval_time, "alertname": alertname, "exp_alerts": [alert]}


CONTROLLER = 'instance="ctl:9100"'
NO_LEADER = "No captcha-fleet controller is leading: the fleet is not being scaled"
RULE_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            series("captcha_fleet_queue_pending", CONTROLLER, "50x10"),
            series("captcha_fleet_completion_rate", CONTROLLER, "0x10"),
            series("captcha_fleet_controller_leader", CONTROLLER, "0x10"),
            series("captcha_fleet_worker_info", 'worker="a", host="h1", version="0.1.0"', "1x10"),
            series("captcha_fleet_worker_info", 'worker="b", host="h2", version="0.1.0"', "1x10"),
            series("captcha_fleet_workers_live", CONTROLLER, "1x10"),
        ],
        "alert_rule_test": [
            silent("CaptchaFleetQueueNotDraining", "4m"),
            fires("CaptchaFleetQueueNotDraining", "6m", "critical", "50 tasks pending and no result for 5 minutes"),
            fires("CaptchaFleetNoLeader", "3m", "critical", NO_LEADER),
            fires(
                "CaptchaFleetWorkerHeartbeatsMissing",
                "6m",
                "warning",
                "Worker processes are up but their Redis heartbeats are missing",
            ),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            series("captcha_fleet_controller_unknown_workers", CONTROLLER, "0 0 3x10"),
            series(
                "captcha_fleet_controller_untrusted_values_total",
                'source="event", reason="not_finite"',
                "0 0 0 0 5 5 5 5 5 5 5 5 5 5 5 5 5",
            ),
        ],
        "alert_rule_test": [
            silent("CaptchaFleetUnknownWorkers", "3m"),
            fires(
                "CaptchaFleetUnknownWorkers",
                "5m",
                "warning",
                "3 heartbeats come from worker ids the controller does not manage",
            ),
            silent("CaptchaFleetUntrustedValues", "3m"),
            fires(
                "CaptchaFleetUntrustedValues",
                "6m",
                "warning",
                "The controller skipped 5 implausible values from Redis in 10 minutes",
            ),
        ],
    },
    {
        "interval": "1m",
        "input_series": [series("captcha_fleet_queue_pending", CONTROLLER, "0x10")],
        "alert_rule_test": [
            fires("CaptchaFleetNoLeader", "3m", "critical", NO_LEADER),
            silent("CaptchaFleetQueueNotDraining", "3m"),
        ],
    },
]


@needs_promtool
def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    document = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": RULE_TESTS}
    tests.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [PROMTOOL or "promtool", "test", "rules", str(tests)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboard --------------------------------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels: list[dict[str, Any]] = []
    for panel in data["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_dashboard_structure() -> None:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert data["uid"] and data["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in (
        "queue and backlog",
        "in flight vs slots",
        "desired vs actual",
        "p95 latency",
        "error rate by class",
        "api requests by outcome",
        "balance and burn rate",
        "decisions by rule",
    ):
        assert wanted in titles


def test_dashboard_uses_only_documented_metrics() -> None:
    known = known_metrics()
    used: set[str] = set()
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            unknown = names - known
            assert not unknown, f"panel {panel['title']!r}: {sorted(unknown)} not in docs/metrics.md"
            used |= names
    # Every documented metric is on the dashboard somewhere (histograms through their buckets).
    documented = {n for n in known if not n.endswith(HISTOGRAM_SUFFIXES)}
    histograms = {n[: -len("_bucket")] for n in used if n.endswith("_bucket")}
    missing = documented - used - histograms
    assert not missing, f"not on the dashboard: {sorted(missing)}"
