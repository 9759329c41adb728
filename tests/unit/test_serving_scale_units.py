"""Workers and replicas, without a server: the metrics of two real worker processes merged as
BentoML's /metrics merges them, a killed worker's live gauges dropped, rows stamped with their
replica and worker, and each server's environment (its own BENTOML_HOME, its replica name)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# One worker process of a replica: counts `requests` /classify requests and `texts` predictions,
# leaves `in_flight` requests in flight, says it serves TAG, then waits for a line on stdin (alive)
# or exits at once without BentoML's clean-exit bookkeeping (like a killed worker).
WORKER = textwrap.dedent("""
    import sys
    from tuneloop.serving import metrics
    worker, requests, texts, in_flight, tag, stay = sys.argv[1:7]
    metrics.REQUESTS.labels(endpoint="/classify").inc(int(requests))
    metrics.PREDICTIONS.labels(label="refund").inc(int(texts))
    metrics.IN_FLIGHT.labels(endpoint="/classify").inc(int(in_flight))
    metrics.MODEL_LIVE.labels(tag="old:1", worker=worker).set(0)
    metrics.MODEL_LIVE.labels(tag=tag, worker=worker).set(1)
    print("ready", flush=True)
    if stay == "stay":
        sys.stdin.readline()
""")


def start_worker(prom_dir, *args: str, stay: bool) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args, "stay" if stay else "exit"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def merged(prom_dir):
    """What /metrics shows: every process's files merged by MultiProcessCollector."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(prom_dir))
    return registry


def test_two_workers_metrics_sum_and_a_dead_workers_live_gauges_are_forgotten(tmp_path):
    from tuneloop.serving.multiproc import forget_dead_workers

    prom = tmp_path / "prom"
    prom.mkdir()
    dead = start_worker(prom, "1", "7", "9", "2", "old:1", stay=False)  # served the old tag, then died
    assert dead.wait(timeout=30) == 0
    alive = start_worker(prom, "2", "5", "6", "1", "new:2", stay=True)
    try:
        reg = merged(prom)
        # counters of both workers sum, the dead one's included (its requests were answered)
        assert reg.get_sample_value("tuneloop_requests_total", {"endpoint": "/classify"}) == 12
        assert reg.get_sample_value("tuneloop_predictions_total", {"label": "refund"}) == 15
        # live gauges: no pid label; the dead worker's values still count until it is forgotten
        assert reg.get_sample_value("tuneloop_requests_in_flight", {"endpoint": "/classify"}) == 3
        assert reg.get_sample_value("tuneloop_model_live", {"tag": "old:1", "worker": "1"}) == 1
        assert reg.get_sample_value("tuneloop_model_live", {"tag": "new:2", "worker": "2"}) == 1

        assert forget_dead_workers(prom) == [dead.pid]
        reg = merged(prom)
        assert reg.get_sample_value("tuneloop_requests_total", {"endpoint": "/classify"}) == 12
        assert reg.get_sample_value("tuneloop_requests_in_flight", {"endpoint": "/classify"}) == 1
        assert reg.get_sample_value("tuneloop_model_live", {"tag": "old:1", "worker": "1"}) is None
        assert reg.get_sample_value("tuneloop_model_live", {"tag": "new:2", "worker": "2"}) == 1
        assert reg.get_sample_value("tuneloop_model_live", {"tag": "old:1", "worker": "2"}) == 0
        assert forget_dead_workers(prom) == []  # the living worker is kept
    finally:
        alive.communicate("\n", timeout=30)
    assert forget_dead_workers(tmp_path / "missing") == []


def test_rows_are_stamped_with_replica_and_worker():
    from tuneloop.serving.origin import Origin
    from tuneloop.state.traffic_store import PredictionRecord

    row = PredictionRecord("r1", 1.0, "hi", "refund", 0.9, [("refund", 0.9)], "m:1", 2.0)
    written = []
    write = Origin("replica-a", 2).stamping(written.extend)
    write([row])
    assert written == [PredictionRecord("r1", 1.0, "hi", "refund", 0.9, [("refund", 0.9)], "m:1", 2.0,
                                        replica="replica-a", worker=2)]
    assert Origin("a", 2).worker_label == "2" and Origin("a", None).worker_label == "0"
    here = Origin.current(None)  # in-process: no BentoML worker, the host name as replica
    assert here.worker is None and here.replica and Origin.current("pod-7").replica == "pod-7"


def test_workers_and_replica_settings():
    from tuneloop.serving.config import ServeConfig

    assert ServeConfig.from_env({}).workers == 1 and ServeConfig.from_env({}).replica is None
    cfg = ServeConfig.from_env({"TUNELOOP_WORKERS": "2", "TUNELOOP_REPLICA": "host-1:3001"})
    assert (cfg.workers, cfg.replica) == (2, "host-1:3001") and ServeConfig.from_env(cfg.to_env()) == cfg
    with pytest.raises(ValueError, match="TUNELOOP_WORKERS"):
        ServeConfig.from_env({"TUNELOOP_WORKERS": "0"})
    with pytest.raises(ValueError, match="TUNELOOP_REPLICA"):
        ServeConfig.from_env({"TUNELOOP_REPLICA": "two words"})


def test_each_server_gets_its_own_bentoml_home_and_replica_name(home, monkeypatch):
    import socket

    from tuneloop.serving.launch import runtime_dir, serve_env

    monkeypatch.delenv("TUNELOOP_REPLICA", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/somewhere/else")
    a, b = serve_env(home, port=3001), serve_env(home, {"TUNELOOP_REPLICA": "b"}, port=3002)
    assert a["BENTOML_HOME"] == str(runtime_dir("127.0.0.1", 3001)) != b["BENTOML_HOME"]
    assert not a["BENTOML_HOME"].startswith(str(home.root))  # local temp, not the (maybe shared) home
    assert a["TUNELOOP_HOME"] == b["TUNELOOP_HOME"] == str(home.root)  # the models: one store
    assert a["TUNELOOP_REPLICA"] == f"{socket.gethostname()}:3001" and b["TUNELOOP_REPLICA"] == "b"
    assert "PROMETHEUS_MULTIPROC_DIR" not in a
    assert serve_env(home, {"BENTOML_HOME": "/x"})["BENTOML_HOME"] == "/x"


def test_cli_passes_workers_and_replica_to_the_server(champion_home, monkeypatch):
    """`tuneloop serve --workers 2 --replica r1`: the settings reach the server's environment
    (the exec itself is replaced by a recorder: starting a server is the integration tests' job)."""
    from typer.testing import CliRunner

    from tuneloop.apps import serve_cli

    seen = {}
    monkeypatch.setattr(serve_cli, "run_foreground", lambda home, host, port, env: seen.update(env))
    result = CliRunner().invoke(serve_cli.app, ["serve", "--home", str(champion_home.root), "--workers", "2",
                                                "--replica", "r1"])
    assert result.exit_code == 0, result.output
    assert seen["TUNELOOP_WORKERS"] == "2" and seen["TUNELOOP_REPLICA"] == "r1"
    result = CliRunner().invoke(serve_cli.app, ["serve", "--home", str(champion_home.root), "--workers", "0"])
    assert result.exit_code == 2 and "TUNELOOP_WORKERS" in result.output
