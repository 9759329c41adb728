"""The serving service in-process: BentoML's real ASGI app (validation, adaptive batching,
/readyz, /metrics) through Starlette's TestClient, on a tiny random champion."""

from __future__ import annotations

import functools
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

# /metrics merges process files with MultiProcessCollector, which needs this set before
# prometheus_client is first imported (BentoML sets it itself under `bentoml serve`).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tuneloop-prom-"))

from conftest import TINY_LABELS, save_tiny_model  # noqa: E402

TOKEN = "test-admin-token"


def sample(name: str, **labels: str) -> float:
    """This process's value of a metric sample (0 when never set)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@functools.cache
def asgi_app():
    """The service's BentoML ASGI app, built once per test process and shared by every TestClient.

    Each ``with TestClient(asgi_app())`` runs the app's lifespan, which builds a new service
    instance reading the environment, as a fresh `bentoml serve` worker would (the service has no
    batchable API, so no BentoML dispatcher holds on to an earlier test's event loop). One app per
    process because BentoML registers its request metrics in prometheus_client's global REGISTRY
    when an app first serves: a second app would fail with "Duplicated timeseries", and
    prometheus_client has no public way to find those collectors to unregister them.
    """
    from tuneloop.serving.service import TuneloopService

    return TuneloopService.to_asgi()


def metrics_reach_the_metrics_endpoint() -> bool:
    """Whether this process's metric values land in ``$PROMETHEUS_MULTIPROC_DIR``'s files, which
    BentoML's /metrics merges with ``MultiProcessCollector`` (prometheus_client picks its value
    store when first imported: files only if the variable was set then). Call it once a service
    has loaded a model (which counts a swap)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or not os.path.isdir(path):
        return False
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return (registry.get_sample_value("tuneloop_model_swaps_total") or 0) > 0


def make_client(home, monkeypatch, token: str | None = TOKEN, poll_seconds: float = 0.2):
    """A TestClient whose service reads ``home`` and the settings from the environment."""
    import torch
    from starlette.testclient import TestClient

    monkeypatch.setenv("TUNELOOP_TORCH_THREADS", str(torch.get_num_threads()))  # leave the test process as is
    monkeypatch.setenv("TUNELOOP_HOME", str(home.root))
    monkeypatch.setenv("TUNELOOP_POLL_SECONDS", str(poll_seconds))
    if token is None:
        monkeypatch.delenv("TUNELOOP_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TUNELOOP_ADMIN_TOKEN", token)
    return TestClient(asgi_app())


@pytest.fixture()
def client(champion_home, monkeypatch):
    with make_client(champion_home, monkeypatch) as c:
        yield c


def champion_tag(home) -> str:
    from tuneloop.state.registry import read_champion

    return read_champion(home).tag


def wait_for_tag(c, tag: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if c.post("/classify", json={"texts": ["hello"]}).json()[0]["model_tag"] == tag:
            return
        time.sleep(0.1)
    raise AssertionError(f"the service did not switch to {tag} within {timeout_s} s")


def test_classify_answers_each_text_and_logs_it(client, champion_home):
    from tuneloop.state.traffic_store import TrafficLog

    texts = ["where is my card?", "I was charged twice", "top up failed"]
    before = sum(sample("tuneloop_predictions_total", label=lab) for lab in TINY_LABELS)
    r = client.post("/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    preds = r.json()
    assert len(preds) == len(texts)
    for p in preds:
        assert re.fullmatch(r"[0-9a-f]{32}", p["request_id"])
        assert p["model_tag"] == champion_tag(champion_home)
        probs = [t["probability"] for t in p["top3"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert p["label"] == p["top3"][0]["label"] and p["label"] in TINY_LABELS
        assert p["confidence"] == pytest.approx(probs[0])
    logged = TrafficLog(champion_home.traffic_db_path).read_window()
    assert list(logged["request_id"]) == [p["request_id"] for p in preds]
    assert list(logged["text"]) == texts
    assert (logged["latency_ms"] > 0).all()
    after = sum(sample("tuneloop_predictions_total", label=lab) for lab in TINY_LABELS)
    assert after - before == len(texts)
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"texts": []}, "at least 1 item"),
        ({"texts": [""]}, "at least 1 character"),
        ({"texts": ["ok", "   "]}, "empty or only whitespace"),
        ({"texts": [123]}, "valid string"),
        ({"texts": [None]}, "valid string"),
        ({"texts": ["x" * 1001]}, "at most 1000 characters"),
        ({"texts": ["a"] * 65}, "at most 64 items"),
        ({"texts": "one text"}, "valid array"),
        ({"text": ["hi"]}, "Field required"),
    ],
)
def test_bad_classify_input_gets_400_that_says_why(client, champion_home, body, message):
    from tuneloop.state.traffic_store import TrafficLog

    r = client.post("/classify", json=body)
    assert r.status_code == 400, r.text
    assert any(message in d["msg"] for d in r.json()["detail"]), r.json()
    assert TrafficLog(champion_home.traffic_db_path).count_predictions() == 0


def test_invalid_json_gets_400(client):
    r = client.post("/classify", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.json()["detail"][0]["msg"]


def test_feedback_is_recorded(client, champion_home):
    from tuneloop.state.traffic_store import TrafficLog

    rid = client.post("/classify", json={"texts": ["lost my card"]}).json()[0]["request_id"]
    r = client.post("/feedback", json={"request_id": rid, "label": "lost_card"})
    assert r.status_code == 200 and r.json() == {"request_id": rid, "label": "lost_card", "recorded": True,
                                                 "reviewer": None, "replaced": False}
    labelled = TrafficLog(champion_home.traffic_db_path).labelled()
    assert list(labelled["true_label"]) == ["lost_card"]


def test_feedback_errors_say_what_is_wrong(client):
    rid = client.post("/classify", json={"texts": ["lost my card"]}).json()[0]["request_id"]
    errors_before = sample("tuneloop_request_errors_total", endpoint="/feedback", reason="unknown_request")
    r = client.post("/feedback", json={"request_id": "f" * 32, "label": "lost_card"})
    assert r.status_code == 404 and "unknown request_id" in r.json()["error"]
    assert sample("tuneloop_request_errors_total", endpoint="/feedback", reason="unknown_request") == errors_before + 1
    r = client.post("/feedback", json={"request_id": rid, "label": "not_a_label"})
    assert r.status_code == 422 and "not one of the 4 labels" in r.json()["error"]
    assert r.json()["labels"] == TINY_LABELS
    for body in ({"request_id": "", "label": "lost_card"}, {"request_id": rid}, {"request_id": rid, "label": 3}):
        r = client.post("/feedback", json=body)
        assert r.status_code == 400 and r.json()["detail"][0]["msg"], body


def test_admin_reload_needs_the_token(client, champion_home):
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/admin/reload", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json() == {"reloaded": False, "model_tag": champion_tag(champion_home),
                        "champion_tag": champion_tag(champion_home), "error": None}


def test_admin_is_disabled_without_a_token(champion_home, monkeypatch):
    with make_client(champion_home, monkeypatch, token=None) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "TUNELOOP_ADMIN_TOKEN" in r.json()["error"]


def test_promoted_model_is_picked_up_by_the_poller(client, champion_home):
    from tuneloop.state.registry import promote

    old = champion_tag(champion_home)
    swaps = sample("tuneloop_model_swaps_total")
    new = save_tiny_model(champion_home, seed=1)
    promote(champion_home, new, reason="test")
    wait_for_tag(client, new)
    assert sample("tuneloop_model_swaps_total") == swaps + 1
    # in-process there is no BentoML worker: the worker label is "0"
    assert sample("tuneloop_model_live", tag=new, worker="0") == 1
    assert sample("tuneloop_model_live", tag=old, worker="0") == 0
    assert sample("tuneloop_model_load_seconds") > 0


def test_admin_reload_swaps_at_once(champion_home, monkeypatch):
    from tuneloop.state.registry import promote

    with make_client(champion_home, monkeypatch, poll_seconds=3600) as c:
        new = save_tiny_model(champion_home, seed=1)
        promote(champion_home, new, reason="test")
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["reloaded"] is True and r.json()["model_tag"] == new
        assert c.post("/classify", json={"texts": ["hi"]}).json()[0]["model_tag"] == new


def _promote_broken_model(home, damage) -> str:
    from tuneloop.state.registry import get_model, promote

    tag = save_tiny_model(home, seed=1)
    damage(Path(get_model(home, tag).path) / "model.safetensors")
    promote(home, tag, reason="test")
    return tag


@pytest.mark.parametrize("damage", [Path.unlink, lambda p: p.write_bytes(b"not a safetensors file")],
                         ids=["missing-weights", "corrupt-weights"])
def test_model_that_fails_to_load_is_not_swapped_in(champion_home, monkeypatch, damage):
    old = champion_tag(champion_home)
    with make_client(champion_home, monkeypatch, poll_seconds=0.2) as c:
        failures = sample("tuneloop_model_swap_failures_total", reason="load")
        broken = _promote_broken_model(champion_home, damage)
        deadline = time.monotonic() + 20
        while sample("tuneloop_model_swap_failures_total", reason="load") == failures and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sample("tuneloop_model_swap_failures_total", reason="load") == failures + 1
        time.sleep(0.6)  # several polls: a failed champion is not retried (nor re-counted) by the poller
        assert sample("tuneloop_model_swap_failures_total", reason="load") == failures + 1
        r = c.post("/classify", json={"texts": ["still serving?"]})
        assert r.status_code == 200 and r.json()[0]["model_tag"] == old
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})  # forced retry
        assert r.status_code == 200
        assert r.json()["reloaded"] is False and r.json()["model_tag"] == old and r.json()["champion_tag"] == broken
        assert "failed to load" in r.json()["error"]
        assert sample("tuneloop_model_swap_failures_total", reason="load") == failures + 2
        assert c.get("/readyz").status_code == 200


def test_model_that_fails_the_smoke_prediction_is_not_swapped_in(champion_home, monkeypatch):
    import numpy as np

    from tuneloop.serving import champion
    from tuneloop.state.registry import promote

    old = champion_tag(champion_home)
    with make_client(champion_home, monkeypatch, poll_seconds=3600) as c:
        failures = sample("tuneloop_model_swap_failures_total", reason="smoke")
        real_load = champion.Classifier.load

        def load_nan_model(path, *args, **kwargs):
            clf = real_load(path, *args, **kwargs)
            clf.predict_proba = lambda texts, **kw: np.full((len(texts), len(clf.labels)), np.nan)
            return clf

        monkeypatch.setattr(champion.Classifier, "load", staticmethod(load_nan_model))
        promote(champion_home, save_tiny_model(champion_home, seed=1), reason="test")
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.json()["reloaded"] is False and "smoke" in r.json()["error"]
        assert sample("tuneloop_model_swap_failures_total", reason="smoke") == failures + 1
        assert c.post("/classify", json={"texts": ["hi"]}).json()[0]["model_tag"] == old


def test_no_champion_means_unready_until_one_is_promoted(home, monkeypatch):
    from tuneloop.state.registry import promote

    with make_client(home, monkeypatch) as c:
        assert c.get("/readyz").status_code == 503
        r = c.post("/classify", json={"texts": ["hi"]})
        assert r.status_code == 503 and "no champion model" in r.json()["error"]
        assert not home.traffic_db_path.exists()  # nothing written into a home without a model
        tag = save_tiny_model(home)
        promote(home, tag, reason="first model")
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.post("/classify", json={"texts": ["hi"]}).json()[0]["model_tag"] == tag


def test_metrics_endpoint_exports_tuneloop_metrics(client):
    if not metrics_reach_the_metrics_endpoint():
        pytest.skip("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    client.post("/classify", json={"texts": ["a", "b"]})
    text = client.get("/metrics").text
    for name in ("tuneloop_requests_total", "tuneloop_predictions_total", "tuneloop_batch_size_bucket",
                 "tuneloop_request_latency_seconds_bucket", "tuneloop_model_live", "tuneloop_model_swaps_total"):
        assert name in text, name
    assert 'le="0.001"' in text  # millisecond buckets from 1 ms


def test_config_errors_name_the_variable():
    from tuneloop.serving.config import ServeConfig

    with pytest.raises(ValueError, match="TUNELOOP_MAX_TEXT_CHARS"):
        ServeConfig.from_env({"TUNELOOP_MAX_TEXT_CHARS": "lots"})
    with pytest.raises(ValueError, match="TUNELOOP_REQUEST_TIMEOUT_S"):
        ServeConfig.from_env({"TUNELOOP_MAX_LATENCY_MS": "200000"})
    cfg = ServeConfig.from_env({"TUNELOOP_ADMIN_TOKEN": "s3cret", "TUNELOOP_POLL_SECONDS": "0.5"})
    assert cfg.poll_seconds == 0.5 and "s3cret" not in repr(cfg)
    assert ServeConfig.from_env(cfg.to_env()) == cfg


def test_serve_command_binds_loopback(champion_home):
    from tuneloop.serving.launch import SERVICE_IMPORT, serve_command

    argv = serve_command(champion_home, port=3123)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and SERVICE_IMPORT in argv and "3123" in argv
    from tuneloop.state.home import Home

    with pytest.raises(FileNotFoundError):
        serve_command(Home(champion_home.root / "missing"))


def test_cli_refuses_a_home_without_champion(home):
    from typer.testing import CliRunner

    from tuneloop.apps.serve_cli import app

    result = CliRunner().invoke(app, ["serve", "--home", str(home.root)])
    assert result.exit_code == 1 and "no champion model" in result.output


def test_request_ids_are_returned_accepted_and_logged(client, champion_home):
    import sqlite3

    r = client.post("/classify", json={"texts": ["a", "b"]}, headers={"X-Request-ID": "client-req:42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-req:42"
    generated = client.post("/classify", json={"texts": ["c"]}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    with sqlite3.connect(champion_home.traffic_db_path) as db:
        rows = db.execute("SELECT http_request_id FROM predictions ORDER BY seq").fetchall()
    assert rows == [("client-req:42",), ("client-req:42",), (generated,)]
    r = client.post("/classify", json={"texts": ["a"]}, headers={"X-Request-ID": "has space"})
    assert r.status_code == 400 and "X-Request-ID" in r.json()["error"]
    assert client.get("/readyz").headers["x-request-id"]  # every answer carries one


def test_body_and_content_type_limits(champion_home, monkeypatch):
    # the limit is read at import, like the other API bounds: the default 1 MiB here
    with make_client(champion_home, monkeypatch) as c:
        r = c.post("/classify", content=b'{"texts": ["' + b"x" * 1_100_000 + b'"]}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "1048576 bytes" in r.json()["error"]
        for media_type in ("text/plain", "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle"):
            r = c.post("/classify", content=b'{"texts": ["hi"]}', headers={"Content-Type": media_type})
            assert r.status_code == 415 and "application/json" in r.json()["error"], media_type
        assert c.post("/classify", content=b'{"texts": ["hi"]}').status_code == 200  # no Content-Type: JSON


def test_health_and_openapi(client):
    assert client.get("/healthz").status_code == 200 and client.get("/livez").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"413", "415", "503"} <= set(spec["paths"]["/classify"]["post"]["responses"])


def test_serving_metrics_cover_batches_log_writes_and_in_flight(client):
    if not metrics_reach_the_metrics_endpoint():
        pytest.skip("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    client.post("/classify", json={"texts": ["a", "b"]})
    text = client.get("/metrics").text
    for name in ("tuneloop_requests_in_flight", "tuneloop_log_write_seconds_bucket", "tuneloop_log_write_rows_sum",
                 "tuneloop_batch_queue_wait_seconds_bucket", "tuneloop_batch_inference_seconds_bucket",
                 "tuneloop_model_load_seconds", "tuneloop_model_swap_failures_total",
                 'bentoml_service_request_duration_seconds_bucket{endpoint="/classify"'):
        assert name in text, name


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_serving_and_disabled_log(champion_home, monkeypatch, precision):
    monkeypatch.setenv("TUNELOOP_QUANTIZE", precision)
    monkeypatch.setenv("TUNELOOP_TRAFFIC_LOG", "0")
    # the store may exist already (promote() records its event there); the service must add nothing to it
    existed = champion_home.traffic_db_path.exists()
    with make_client(champion_home, monkeypatch) as c:
        r = c.post("/classify", json={"texts": ["where is my card", "refund"]})
        assert r.status_code == 200 and 0 < r.json()[0]["confidence"] <= 1
        r = c.post("/feedback", json={"request_id": "0" * 32, "label": "lost_card"})
        assert r.status_code == 503 and "traffic log is off" in r.json()["error"]
    if not existed:
        assert not champion_home.traffic_db_path.exists()
    else:
        from tuneloop.state.traffic_store import TrafficLog

        log = TrafficLog(champion_home.traffic_db_path)
        assert log.count_predictions() == 0 and log.count_labelled() == 0
