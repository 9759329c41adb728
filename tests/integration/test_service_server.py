"""A real `bentoml serve` process on 127.0.0.1 (free port) over a tiny random champion: HTTP API,
/metrics merged from the worker, adaptive batching, and a hot swap under traffic."""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import save_tiny_model, served_tiny_champion

TOKEN = "server-test-token"
REQUEST_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(home, server handle) shared by the module; the poller is slowed so /admin/reload decides swaps."""
    env = {"TUNELOOP_ADMIN_TOKEN": TOKEN, "TUNELOOP_POLL_SECONDS": "3600"}
    with served_tiny_champion(tmp_path_factory, "served", env, ready_timeout=90) as served:
        yield served


@pytest.fixture()
def http(served):
    with httpx.Client(base_url=served[1].url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text format (0 when absent); labels must match exactly."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(2))
    return total


def test_server_binds_loopback_and_is_ready(served, http):
    assert served[1].url.startswith("http://127.0.0.1:")
    assert http.get("/readyz").status_code == 200


def test_classify_feedback_and_bad_inputs_over_http(served, http):
    home, _ = served
    r = http.post("/classify", json={"texts": ["my card has not arrived", "refund me"]})
    assert r.status_code == 200, r.text
    preds = r.json()
    assert [len(p["top3"]) for p in preds] == [3, 3] and all(p["model_tag"].startswith("tuneloop-classifier:") for p in preds)
    rid = preds[0]["request_id"]
    assert http.post("/feedback", json={"request_id": rid, "label": "card_arrival"}).json()["recorded"] is True
    assert http.post("/feedback", json={"request_id": "0" * 32, "label": "card_arrival"}).status_code == 404
    assert http.post("/feedback", json={"request_id": rid, "label": "nope"}).status_code == 422
    for body, status in [({"texts": []}, 400), ({"texts": [" "]}, 400), ({"texts": ["x" * 1001]}, 400),
                         ({"texts": ["a"] * 65}, 400), ({"texts": [7]}, 400), ({}, 400)]:
        r = http.post("/classify", json=body)
        assert r.status_code == status and r.json()["detail"][0]["msg"], (body, r.text)
    assert http.post("/admin/reload").status_code == 401
    assert http.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_metrics_count_what_was_served_and_requests_are_batched(http):
    before = http.get("/metrics").text
    n_requests, texts_per_request = 48, 2

    def classify(i: int) -> int:
        r = http.post("/classify", json={"texts": [f"text {i}", f"other text {i}"]})
        return r.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(classify, range(n_requests)))
    assert statuses == [200] * n_requests
    assert http.post("/classify", json={"texts": []}).status_code == 400
    after = http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    n_texts = n_requests * texts_per_request
    assert delta("tuneloop_predictions_total") == n_texts
    assert delta("tuneloop_prediction_confidence_count") == n_texts
    assert delta("tuneloop_batch_size_sum") == n_texts
    assert delta("tuneloop_requests_total", endpoint="/classify") == n_requests + 1
    assert delta("tuneloop_request_errors_total", endpoint="/classify", reason="invalid_input") == 1
    assert delta("tuneloop_request_latency_seconds_count", endpoint="/classify") == n_requests + 1
    # adaptive batching: concurrent requests shared forward passes
    assert 0 < delta("tuneloop_batch_size_count") < n_requests
    assert metric(after, "tuneloop_model_swaps_total") >= 1
    assert metric(after, "tuneloop_model_load_seconds") > 0
    assert 'tuneloop_request_latency_seconds_bucket{endpoint="/classify",le="0.001"}' in after


def test_hot_swap_under_traffic_loses_no_request(served, http):
    from tuneloop.state.registry import promote, read_champion
    from tuneloop.state.traffic_store import TrafficLog

    home, server = served
    log = TrafficLog(home.traffic_db_path)
    rows_before = log.count_predictions()
    old_tag = read_champion(home).tag
    stop = threading.Event()
    answered: list[tuple[str, int, str]] = []  # (request_id, status, model_tag) per text
    failures: list[str] = []
    deadline = time.monotonic() + 45

    def send_traffic(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
            for i in range(400):  # bounded in count and in time
                if stop.is_set() or time.monotonic() > deadline:
                    return
                texts = [f"client {seed} request {i} text {k}" for k in range(rng.randint(1, 3))]
                try:
                    r = client.post("/classify", json={"texts": texts})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                answered.extend((p["request_id"], 200, p["model_tag"]) for p in r.json())

    threads = [threading.Thread(target=send_traffic, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    new_tag = save_tiny_model(home, seed=1)  # trains nothing, but competes for the CPU like a trainer
    promote(home, new_tag, reason="test: challenger won")
    r = http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["reloaded"] is True and r.json()["model_tag"] == new_tag, r.text
    n_at_swap = len(answered)
    while len(answered) < n_at_swap + 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S)

    assert failures == []
    tags = [tag for _, _, tag in answered]
    assert old_tag in tags and new_tag in tags
    assert tags[-1] == new_tag
    # acknowledged => logged: one row per text answered with 200, with the ids the clients saw
    assert log.count_predictions() - rows_before == len(answered)
    logged = log.read_window()
    logged_ids = set(logged["request_id"])
    assert all(rid in logged_ids for rid, _, _ in answered)
    by_id = dict(zip(logged["request_id"], logged["model_tag"]))
    assert all(by_id[rid] == tag for rid, _, tag in answered)
    metrics_text = http.get("/metrics").text
    assert metric(metrics_text, "tuneloop_model_live", tag=new_tag) == 1
    assert metric(metrics_text, "tuneloop_model_live", tag=old_tag) == 0


def test_admin_token_never_reaches_the_server_log(served, http):
    _, server = served
    assert http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert http.post("/admin/reload").status_code == 401
    log = server.log_path.read_text(errors="replace")
    assert "/admin/reload" in log  # the access log saw the calls
    assert TOKEN not in log
