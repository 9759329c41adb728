"""Live: a real Prometheus (Debian package) on 127.0.0.1 scrapes a real ``bentoml serve`` and a real
``tuneloop monitor`` process during a short drifted replay; then every PromQL expression of the
Grafana dashboard runs through Prometheus's HTTP API and must return data, and the alerting rules
must load and evaluate without error. About a minute on 2 CPU cores (tiny random champion)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from test_prometheus_config import (
    PROM_DIR,
    dashboard_queries,
    expand,
    load_dashboard,
    require_binary,
    running_prometheus,
)

from tuneloop.serving.launch import stop_server

pytestmark = [pytest.mark.timeout(420)]

IN_DISTRIBUTION = [f"where is my card number {i}" for i in range(20)]  # the tiny champion's reference texts
DRIFTED = ["I lost my card yesterday, what do I do", "how do I top up by bank transfer", "refund has not arrived",
           "my new card still has not come", "can I get my money back for this", "top-up failed twice today",
           "someone stole my wallet and the card", "when will the card be delivered to me"]
LABELS = ["lost_card", "top_up", "refund", "card_arrival", "refund", "top_up", "lost_card", "card_arrival"]


@contextlib.contextmanager
def monitor_process(home, port: int, tmp_path) -> Iterator[subprocess.Popen]:
    """``tuneloop monitor`` with 1 s checks, 20-row windows and no retraining (labels never suffice)."""
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({"interval_seconds": 1.0, "metrics_port": port,
                                   "policy": {"min_window": 20, "min_new_labels": 100000}}))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | home.env()
    log = open(tmp_path / "monitor.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.apps.cli", "monitor", "--home", str(home.root),
                             "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "monitor.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield proc
    finally:
        stop_server(proc, timeout_s=30)
        log.close()


def prometheus_config(tmp_path, service_port: int, monitor_port: int):
    """The repository's prometheus.yml, with 1 s scrapes and the test's ports."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    cfg["rule_files"] = [str(PROM_DIR / "rules.yml")]
    ports = {"tuneloop-service": service_port, "tuneloop-monitor": monitor_port}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def query(prom: str, expr: str) -> list:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for_windows(prom: str, n: int, timeout_s: float = 120) -> None:
    """Until Prometheus has scraped ``n`` judged windows from the monitor."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = query(prom, "sum(tuneloop_monitor_decisions_total)")
        if found and float(found[0]["value"][1]) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"Prometheus saw fewer than {n} judged windows after {timeout_s:.0f} s")


def replay(url: str, n: int, texts: list[str], labels: list[str] | None) -> None:
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            item = client.post(f"{url}/classify", json={"texts": [texts[i % len(texts)]]}).json()[0]
            if labels is not None and i % 2 == 0:
                assert client.post(f"{url}/feedback", json={"request_id": item["request_id"],
                                                            "label": labels[i % len(labels)]}).status_code == 200
        assert client.post(f"{url}/classify", json={"texts": []}).status_code == 400  # error series
        assert client.post(f"{url}/feedback", json={"request_id": item["request_id"], "label": "nope"}).status_code == 422


def test_every_dashboard_panel_returns_data_from_a_live_loop(champion_home, tmp_path):
    from tuneloop.serving.launch import free_port, running_server

    require_binary("prometheus")
    monitor_port, prom_port = free_port(), free_port()
    with running_server(champion_home, env={"TUNELOOP_POLL_SECONDS": "1"}, ready_timeout=180) as server, \
            monitor_process(champion_home, monitor_port, tmp_path), \
            running_prometheus(prometheus_config(tmp_path, int(server.url.rsplit(":", 1)[1]), monitor_port),
                               tmp_path / "tsdb", prom_port, tmp_path / "prometheus.log") as prom:
        replay(server.url, 40, IN_DISTRIBUTION, None)
        wait_for_windows(prom, 1)
        replay(server.url, 80, DRIFTED, LABELS)
        wait_for_windows(prom, 2)
        deadline, missing = time.monotonic() + 60, ["(not queried yet)"]
        while time.monotonic() < deadline and missing:  # a few scrapes may still be on their way
            missing = [f"{title}: {expr}" for title, expr in dashboard_queries(load_dashboard())
                       if not query(prom, expand(expr))]
            time.sleep(0 if not missing else 2)
        assert not missing, "panels without data:\n" + "\n".join(missing)
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {"tuneloop-service": "up",
                                                                      "tuneloop-monitor": "up"}
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 12 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                                              for r in rules]
        for annotation in load_dashboard()["annotations"]["list"]:  # annotation queries must at least parse
            if "expr" in annotation:
                query(prom, annotation["expr"])
        drift = query(prom, 'tuneloop_monitor_drift_p_value{signal="label_drift"}')
        assert drift and drift[0]["metric"]["job"] == "tuneloop-monitor"
