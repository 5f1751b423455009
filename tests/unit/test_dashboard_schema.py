"""The Grafana dashboard as Grafana's own schema reads it: the Grafana Foundation SDK (types generated from that
schema) parses docker/monitoring/grafana/dashboards/appliance.json and writes it back with nothing lost, every
panel type is Grafana's and every query a Prometheus one. Whether each query has data: test_monitoring.py."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is not installed (pip install -c "
                    "requirements/test.txt '.[test]')")

ROOT = Path(__file__).resolve().parents[2]


def check_dashboard():
    spec = importlib.util.spec_from_file_location("check_dashboard",
                                                  ROOT / "scripts" / "observability" / "check_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dashboard_is_read_by_grafanas_schema_with_nothing_lost():
    check = check_dashboard()
    dashboard = json.loads(check.DASHBOARD.read_text())
    assert check.schema_problems(dashboard) == []
    assert check.main(["schema"]) == 0


def test_what_grafanas_schema_does_not_have_is_reported():
    check = check_dashboard()
    dashboard = json.loads(check.DASHBOARD.read_text())
    bad = copy.deepcopy(dashboard)
    (stat,) = [p for p in bad["panels"] if p["type"] == "stat"]
    stat["options"]["legend"] = {"displayMode": "list"}  # a time series' option: a stat panel has no legend
    bad["panels"][0]["gridPoss"] = bad["panels"][0].pop("gridPos")
    bad["panels"][1]["type"] = "timeseriez"
    del bad["panels"][2]["targets"][0]["expr"]
    problems = check.schema_problems(bad)
    i = bad["panels"].index(stat)
    assert f"/panels[{i}]/options/legend: not in Grafana's schema here (dropped)" in problems
    assert "/panels[0]/gridPoss: not in Grafana's schema here (dropped)" in problems
    assert any(p.startswith("/panels[1] (") and "'timeseriez' is not Grafana's" in p for p in problems)
    assert any(p.startswith("/panels[2]/targets[0]") and "not a Prometheus query" in p for p in problems)
