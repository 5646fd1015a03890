"""Dashboards and Prometheus configuration: generated JSON up to date, documented metric names only,
every PromQL expression valid (promtool), alert rules and scrape config valid."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "helm" / "unirec" / "dashboards"
ALERTS = REPO / "helm" / "unirec" / "files" / "alerts.yml"
METRIC = re.compile(r"\bunirec_[a-z0-9_]+")


def documented_metrics() -> dict[str, str]:
    """name -> type, from the tables of docs/metrics.md."""
    text = (REPO / "docs" / "metrics.md").read_text()
    rows = re.findall(r"^\| `(unirec_[a-z0-9_]+)` \| ([a-z/ 0-9]+?) \|", text, re.M)
    assert len(rows) > 20, "could not read the metric tables of docs/metrics.md"
    return dict(rows)


def series_names(metrics: dict[str, str]) -> set[str]:
    names = set()
    for name, kind in metrics.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_generated_dashboards_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(REPO / "deploy" / "grafana" / "build_dashboards.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_single_copy_of_the_dashboards() -> None:
    link = REPO / "deploy" / "grafana" / "dashboards"
    assert link.is_symlink() and link.resolve() == DASHBOARDS.resolve()
    assert {p.name for p in DASHBOARDS.glob("*.json")} == {"training.json", "churn.json", "serving.json"}


def test_dashboards_use_exactly_the_documented_metrics(dashboard_queries) -> None:
    metrics = documented_metrics()
    allowed = series_names(metrics)
    used = set()
    for name, title, expr in dashboard_queries:
        for metric in METRIC.findall(expr):
            assert metric in allowed, f"{name} / {title}: {metric} is not in docs/metrics.md"
            used.add(re.sub(r"_(bucket|sum|count)$", "", metric) if metric not in metrics else metric)
    assert set(metrics) - used == set(), "documented metrics no dashboard shows"


def test_dashboard_structure() -> None:
    uids = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[0] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} overflows the grid"
            used_vars = set(re.findall(r"\$(\w+)", json.dumps(panel["targets"])))
            assert used_vars <= set(names) | {"__rate_interval"}, f"{path.name}: {panel['title']} uses {used_vars}"


def test_every_expression_parses(promtool: str, dashboard_queries, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_queries)]}]}
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid_and_documented(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    allowed = series_names(documented_metrics())
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert set(METRIC.findall(rule["expr"])) <= allowed, rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")


def test_compose_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(ALERTS)]  # the path Compose mounts it at, here
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["datasources/prometheus.yml", "dashboards/unirec.yml"])
def test_grafana_provisioning_files(name: str) -> None:
    doc = yaml.safe_load((REPO / "deploy" / "grafana" / "provisioning" / name).read_text())
    assert doc["apiVersion"] == 1
