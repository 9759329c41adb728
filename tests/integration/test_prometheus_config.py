"""The monitoring configuration as code: Prometheus scrape config and alerting rules (checked and
unit-tested with ``promtool``), the Grafana dashboard and provisioning, docker-compose.yml.

Also the helpers the live test (test_prometheus_integration.py) uses: find Debian's ``prometheus`` /
``promtool`` (skip cleanly when missing, fail under CI, where .ci/run installs them), read the
dashboard's PromQL, run a real Prometheus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.serving.launch import stop_server

REPO_ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = REPO_ROOT / "monitoring" / "prometheus"
GRAFANA_DIR = REPO_ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "tuneloop.json"
REQUIRE_ENV = "TUNELOOP_REQUIRE_PROMETHEUS"  # set by .ci/run, which installs Debian's prometheus package
# Grafana's template variables, as a Prometheus query needs them spelled out
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "10m", "$__interval": "15s"}


def require_binary(name: str) -> str:
    """Path of ``name``; skip (or fail under CI, where .ci/run installs it) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"`{name}` not found: install Debian's prometheus package (apt-get install -y prometheus)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(msg + f"; {REQUIRE_ENV} is set, so CI must have it")
        pytest.skip(msg)
    return path


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel (rows' nested panels included)."""
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))

    walk(dashboard["panels"])
    return out


def expand(expr: str) -> str:
    """Replace Grafana's template variables by durations."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@contextlib.contextmanager
def running_prometheus(config_path: Path, data_dir: Path, port: int, log_path: Path) -> Iterator[str]:
    """Run ``prometheus`` on 127.0.0.1:``port`` until the block ends; yields its base URL."""
    import httpx

    binary = require_binary("prometheus")
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([binary, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
                                 f"--storage.tsdb.path={data_dir}", "--storage.tsdb.retention.time=1h"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"prometheus not ready after 60 s: {log_path.read_text()[-2000:]}")
        yield url
    finally:
        stop_server(proc, timeout_s=20)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_prometheus_config_and_rules_are_valid():
    res = _promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    res = _promtool("check", "rules", str(PROM_DIR / "rules.yml"))
    assert res.returncode == 0 and "SUCCESS: 12 rules found" in res.stdout, res.stdout + res.stderr


def test_every_alerting_rule_has_promtool_unit_tests():
    import yaml

    res = _promtool("test", "rules", str(PROM_DIR / "tests" / "rules_test.yml"))
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    rules = {r["alert"] for g in yaml.safe_load((PROM_DIR / "rules.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM_DIR / "tests" / "rules_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t.get("exp_alerts")}
    silent = {t["alertname"] for case in tests for t in case["alert_rule_test"] if not t.get("exp_alerts")}
    assert rules == fired == silent, (rules - fired, rules - silent)  # each rule shown firing and silent
    assert {"TuneloopDriftDetected", "TuneloopEstimatedAccuracyDrop", "TuneloopLabelAccuracyDrop",
            "TuneloopServiceErrors", "TuneloopHighLatency", "TuneloopMonitorStale", "TuneloopNeedLabels",
            "TuneloopModelRolledBack"} <= rules


def test_dashboard_is_grafana_json_and_uses_the_provisioned_datasource():
    import yaml

    dash = load_dashboard()
    assert dash["uid"] == "tuneloop" and dash["schemaVersion"] >= 36 and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    (source,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    for panel in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel), panel
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"] and panel["targets"], panel["title"]
            assert panel.get("description"), f"panel {panel['title']!r} needs a description"
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    queries = [q for _, q in dashboard_queries(dash)]
    for needle in ("tuneloop_requests_total", "tuneloop_request_latency_seconds_bucket", "tuneloop_request_errors_total",
                   "tuneloop_predictions_total", "tuneloop_monitor_estimated_accuracy", "tuneloop_monitor_feedback_accuracy",
                   "tuneloop_monitor_retrains_total", "tuneloop_model_swaps_total", "tuneloop_model_live",
                   "tuneloop_monitor_rollbacks_total"):
        assert any(needle in q for q in queries), needle
    for signal in ("text_drift", "embedding_drift", "accuracy_drop"):  # score against its threshold
        assert f'tuneloop_monitor_drift_threshold{{signal="{signal}"}}' in queries
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "tuneloop.yml").read_text())["providers"]
    assert provider["type"] == "file"


def test_compose_mounts_the_same_configuration():
    import yaml

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"service", "monitor", "retrain", "postgres", "prometheus", "grafana"}  # (deploy tests: the rest)
    assert "./monitoring/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = services["grafana"]["volumes"]
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "tuneloop.yml").read_text())["providers"][0]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in grafana
    for name in ("monitor", "prometheus", "grafana"):  # one network namespace: 127.0.0.1 targets hold
        assert services[name]["network_mode"] == "service:service"
    targets = [t for job in yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:3000", "127.0.0.1:9108"]
