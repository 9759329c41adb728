"""The generation Grafana dashboard (monitoring/grafana/dashboards/tuneloop-generation.json): valid
Grafana JSON on the provisioned datasource, every query parses (``promtool``, when installed) and
names only metrics that the monitor or the service export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "tuneloop-generation.json"
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "10m", "$__interval": "15s"}
METRIC = re.compile(r"\btuneloop_[a-z0-9_]+")
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_the_generation_dashboard_is_grafana_json_on_the_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    classification = json.loads((GRAFANA_DIR / "dashboards" / "tuneloop.json").read_text())
    assert dash["uid"] == "tuneloop-generation" != classification["uid"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) > 15
    (source,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    for panel in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel), panel
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"] and panel["targets"], panel["title"]
            assert panel.get("description"), f"panel {panel['title']!r} needs a description"
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    exprs = " ".join(q for _, q in queries(dash))
    for needle in ("tuneloop_generation_time_to_first_token_seconds_bucket", "tuneloop_monitor_generation_rouge_l",
                   "tuneloop_monitor_generation_bad_rating_share", "tuneloop_monitor_generation_stop_rate",
                   "tuneloop_monitor_generation_mean_logprob", "tuneloop_monitor_generation_reply_length_characters",
                   'signal="rouge_drop"', 'signal="bad_rating_rise"', "reply_length|stop_rate|placeholder_rate"):
        assert needle in exprs, needle
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "tuneloop.yml").read_text())["providers"]
    assert provider["type"] == "file"  # the provider loads every dashboard file of the folder


def test_every_generation_panel_queries_exported_metrics():
    from prometheus_client import REGISTRY

    import tuneloop.serving.metrics  # noqa: F401  (registers the service's metrics)
    from tuneloop.monitoring.exporter import MonitorMetrics

    families = {m.name for m in MonitorMetrics().registry.collect()} | {m.name for m in REGISTRY.collect()}
    exported = {name + suffix for name in families for suffix in SUFFIXES}
    used = {name for _, q in queries(json.loads(DASHBOARD.read_text())) for name in METRIC.findall(q)}
    assert used and not used - exported, sorted(used - exported)


def test_every_generation_query_parses():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("`promtool` not found: install Debian's prometheus package")
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"tuneloop:panel_{i}", "expr": expand(q)}
                                                        for i, (_, q) in enumerate(queries(json.loads(DASHBOARD.read_text())))]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "panels.yml"
        path.write_text(yaml.safe_dump(rules))
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
