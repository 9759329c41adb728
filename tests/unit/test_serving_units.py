"""Unit tests of the serving building blocks: length grouping, the micro-batcher, the group-commit
log writer, request ids, the corrected OpenAPI document, config and quantisation choices."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import sqlite3
import threading
import time

import numpy as np
import pytest
from conftest import TINY_LABELS, write_tiny_model


def _cost(lengths: list[int], groups: list[tuple[int, int]], overhead: float) -> float:
    return sum(overhead + (end - start) * lengths[end - 1] for start, end in groups)


@pytest.mark.parametrize("overhead", [0.0, 5.0, 24.0, 1000.0])
def test_plan_groups_is_an_optimal_contiguous_cut(overhead):
    from tuneloop.serving.inference import plan_groups

    rng = random.Random(0)
    for _ in range(30):
        lengths = sorted(rng.randint(3, 40) for _ in range(rng.randint(1, 9)))
        groups = plan_groups(lengths, overhead)
        assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
        best = min(  # brute force over every set of cut points
            _cost(lengths, [(a, b) for a, b in zip((0, *cuts), (*cuts, len(lengths)))], overhead)
            for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k)
        )
        assert _cost(lengths, groups, overhead) == pytest.approx(best)
    assert plan_groups([5] * 10, 1.0) == [(0, 10)]
    assert plan_groups([], 10.0) == []


@pytest.mark.parametrize("overhead", [0.0, 64.0, 4096.0])
def test_grouped_prediction_equals_the_plain_one(tmp_path, overhead):
    from tuneloop.serving.inference import predict_proba, warm_up
    from tuneloop.training.predict import Classifier

    write_tiny_model(tmp_path)
    clf = Classifier.load(tmp_path, device="cpu")
    rng = random.Random(1)
    words = "card refund top up charged twice where is my new transfer pending exchange".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(37)]
    np.testing.assert_allclose(predict_proba(clf, texts, overhead), clf.predict_proba(texts), atol=1e-5)
    assert predict_proba(clf, [], overhead).shape == (0, len(TINY_LABELS))
    assert 0 <= warm_up(clf) <= 4096


def _batcher(run_batch, **kwargs):
    from tuneloop.serving.batcher import MicroBatcher

    defaults = {"max_batch_size": 8, "window_s": 0.005, "max_queue_texts": 100, "max_wait_s": 10.0}
    return MicroBatcher(run_batch, **{**defaults, **kwargs})


def test_batcher_merges_concurrent_requests_and_keeps_order():
    calls = []

    def run_batch(texts, info):
        calls.append((list(texts), info))
        time.sleep(0.02)
        return [t.upper() for t in texts], None

    async def main():
        batcher = _batcher(run_batch)
        requests = [[f"r{i}-a", f"r{i}-b"] if i % 2 else [f"r{i}"] for i in range(12)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        batcher.close()
        return requests, results

    requests, results = asyncio.run(main())
    assert results == [[t.upper() for t in r] for r in requests]
    assert len(calls) < len(requests)  # merged
    assert all(len(texts) <= 8 for texts, _ in calls) and sum(len(t) for t, _ in calls) == 18
    assert all(info.texts == len(texts) and info.oldest_wait_s >= 0 for texts, info in calls)


def test_batcher_bounds_and_errors():
    from tuneloop.serving.batcher import QueueFullError, QueueTimeoutError

    release = threading.Event()

    def slow(texts, info):
        release.wait(5)
        if "boom" in texts:
            raise ValueError("boom")
        return list(texts), None

    async def scenario():
        batcher = _batcher(slow, max_queue_texts=3, max_batch_size=2, max_wait_s=0.05, window_s=0)
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.submit(["c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(["e", "f"])  # 2 queued + 2 > 3
        await asyncio.sleep(0.1)  # "c d" now waited longer than max_wait_s
        release.set()
        assert await first == ["a", "b"]
        with pytest.raises(QueueTimeoutError):
            await waiting
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit(["boom"])
        assert await batcher.submit(["ok"]) == ["ok"]  # the batcher survives a failed batch
        batcher.close()

    asyncio.run(scenario())


def test_batcher_runs_batches_on_several_workers_at_once():
    running, peak, lock = [0], [0], threading.Lock()

    def run_batch(texts, info):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return list(texts), None

    async def main():
        batcher = _batcher(run_batch, max_batch_size=1, window_s=0, workers=2)
        await asyncio.gather(*(batcher.submit([str(i)]) for i in range(6)))
        batcher.close()

    asyncio.run(main())
    assert peak[0] == 2


def test_batcher_delivers_after_the_batch_future_and_frees_the_worker_before():
    from concurrent.futures import Future

    pending: list[Future] = []

    def run_batch(texts, info):
        pending.append(Future())
        return list(texts), pending[-1]

    async def main():
        batcher = _batcher(run_batch, window_s=0)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        assert not first.done() and batcher.busy == 0  # computed, worker free, waiting for the commit
        second = asyncio.ensure_future(batcher.submit(["b"]))
        await asyncio.sleep(0.05)
        pending[0].set_result(None)
        pending[1].set_exception(RuntimeError("commit failed"))
        assert await first == ["a"]
        with pytest.raises(RuntimeError, match="commit failed"):
            await second
        batcher.close()

    asyncio.run(main())


def test_group_commit_writer_commits_everything_in_few_transactions():
    from tuneloop.serving.log_writer import GroupCommitWriter, LogWriteError

    groups, commits = [], []

    def write(rows):
        time.sleep(0.01)
        groups.append(list(rows))

    writer = GroupCommitWriter(write, on_commit=lambda n, s: commits.append(n))
    futures = []
    threads = [threading.Thread(target=lambda k=k: futures.extend(writer.submit([(k, i)]) for i in range(20)))
               for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        assert f.result(timeout=10) is None
    assert sorted(r for g in groups for r in g) == sorted((k, i) for k in range(5) for i in range(20))
    assert len(groups) < 100 and sum(commits) == 100
    writer.close()
    assert not writer.is_alive()
    with pytest.raises(LogWriteError):
        writer.submit([1])

    failures = []
    broken = GroupCommitWriter(lambda rows: 1 / 0, on_failure=failures.append)
    with pytest.raises(LogWriteError, match="not acknowledged"):
        broken.submit([1]).result(timeout=10)
    assert isinstance(failures[0], ZeroDivisionError) and broken.is_alive()
    broken.close()


def test_ids_are_random_hex_and_unique():
    from tuneloop.serving.middleware import IdSource

    ids = IdSource()
    many = [ids() for _ in range(3000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in many) and len(set(many)) == len(many)


def test_corrected_openapi_documents_every_answer():
    from starlette.testclient import TestClient
    from test_service import asgi_app

    from tuneloop.serving.openapi import ROUTE_ERRORS, corrected_spec

    # BentoML's own document through the service's app (the one app of this test process, see
    # asgi_app), corrected on the way
    spec = TestClient(asgi_app()).get("/docs.json").json()
    assert corrected_spec(spec) == spec  # served corrected, and correcting is idempotent
    for route, statuses in ROUTE_ERRORS.items():
        op = spec["paths"][route]["post"]
        assert set(op["responses"]) == {"200", *map(str, statuses)}
        assert op["parameters"][0]["name"] == "X-Request-ID"
    assert spec["paths"]["/classify"]["post"]["requestBody"]["required"] is True
    assert "required" not in spec["paths"]["/admin/reload"]["post"]["requestBody"]
    assert spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["texts"]["items"]["pattern"] == r"\S"
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_openapi_middleware_corrects_the_inner_apps_document_once():
    import json

    from tuneloop.serving.openapi import OpenAPIMiddleware, corrected_spec

    bentoml_doc = {"openapi": "3.0.2", "components": {"schemas": {}}, "paths": {
        "/readyz": {"get": {"responses": {"200": {"description": "ready"}}}},
        **{route: {"post": {"x-bentoml-name": route.strip("/").replace("/", "_"), "requestBody": {"content": {}},
                            "responses": {"200": {"description": "ok", "content": {}}, "500": {}}}}
           for route in ("/classify", "/feedback", "/admin/reload")},
    }}
    calls: list[str] = []

    async def inner(scope, receive, send):
        calls.append(scope["path"])
        status, body = (200, bentoml_doc) if scope["path"] == "/docs.json" else (418, {"inner": True})
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-inner", b"1")]})
        await send({"type": "http.response.body", "body": payload[:5], "more_body": True})
        await send({"type": "http.response.body", "body": payload[5:]})

    async def request(app, path: str) -> tuple[int, dict, bytes]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
        start = sent[0]
        return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    app = OpenAPIMiddleware(inner)
    for _ in range(2):
        status, headers, body = asyncio.run(request(app, "/docs.json"))
        assert status == 200 and headers[b"content-type"] == b"application/json"
        assert json.loads(body) == corrected_spec(bentoml_doc)
    assert calls == ["/docs.json"]  # asked BentoML once, then served from the cache
    assert asyncio.run(request(app, "/other"))[::2] == (418, b'{"inner": true}')  # other paths pass through

    async def no_docs(scope, receive, send):  # e.g. BentoML's experimental new_index UI: no /docs.json
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"Not Found"})

    assert asyncio.run(request(OpenAPIMiddleware(no_docs), "/docs.json"))[::2] == (404, b"Not Found")


def test_serve_config_reads_the_new_settings():
    from tuneloop.serving.config import ServeConfig

    cfg = ServeConfig.from_env({"TUNELOOP_TRAFFIC_LOG": "0", "TUNELOOP_METRICS": "off", "TUNELOOP_QUANTIZE": "int8",
                                "TUNELOOP_INFERENCE_WORKERS": "2", "TUNELOOP_BATCH_WINDOW_MS": "0",
                                "TUNELOOP_LOG_SYNC": "full"})
    assert (cfg.traffic_log, cfg.metrics, cfg.quantize, cfg.inference_workers, cfg.log_sync) == (
        False, False, "int8", 2, "full")
    assert ServeConfig.from_env(cfg.to_env()) == cfg
    assert ServeConfig().quantize == "auto" and ServeConfig().trace_requests is False
    with pytest.raises(ValueError, match="TUNELOOP_QUANTIZE"):
        ServeConfig.from_env({"TUNELOOP_QUANTIZE": "int4"})
    with pytest.raises(ValueError, match="TUNELOOP_MAX_QUEUE_TEXTS"):
        ServeConfig.from_env({"TUNELOOP_MAX_QUEUE_TEXTS": "10", "TUNELOOP_MAX_BATCH_TEXTS": "64"})


def test_quantisation_follows_the_setting_and_the_model(tmp_path, monkeypatch):
    from tuneloop.serving import champion
    from tuneloop.training.predict import Classifier

    monkeypatch.setattr(champion, "pick_device", lambda: "cpu")
    assert champion.resolve_quantize("auto", {"serving_quantization": "int8"}) == "int8"
    assert isinstance(champion.cpu_has_native_bf16(), bool)
    monkeypatch.setattr(champion, "cpu_has_native_bf16", lambda: True)
    assert champion.resolve_quantize("auto", {}) == "bf16"
    monkeypatch.setattr(champion, "cpu_has_native_bf16", lambda: False)
    assert champion.resolve_quantize("auto", {}) is None
    assert champion.resolve_quantize("none", {"serving_quantization": "int8"}) is None
    assert champion.resolve_quantize("int8", {}) == "int8" and champion.resolve_quantize("bf16", {}) == "bf16"
    monkeypatch.setattr(champion, "pick_device", lambda: "cuda")
    assert champion.resolve_quantize("auto", {"serving_quantization": "int8"}) is None

    write_tiny_model(tmp_path)
    fp32, int8 = Classifier.load(tmp_path, device="cpu"), Classifier.load(tmp_path, quantize="int8")
    assert int8.device == "cpu" and "quantized" in type(int8.model.bert.encoder.layer[0].intermediate.dense).__module__
    texts = ["where is my card", "refund please"]
    np.testing.assert_allclose(int8.predict_proba(texts), fp32.predict_proba(texts), atol=0.05)
    with pytest.raises(ValueError, match="quantize"):
        Classifier.load(tmp_path, quantize="int4")


def test_traffic_log_adds_the_request_id_column_to_an_old_file(tmp_path):
    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    path = tmp_path / "traffic.db"
    with sqlite3.connect(path) as db:  # the layout before X-Request-ID was logged
        db.execute("CREATE TABLE predictions (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id VARCHAR(64) UNIQUE, "
                   "created_at FLOAT, text TEXT, label VARCHAR(256), confidence FLOAT, top3 TEXT, "
                   "model_tag VARCHAR(256), latency_ms FLOAT)")
        db.execute("INSERT INTO predictions (request_id, created_at, text, label, confidence, top3, model_tag, "
                   "latency_ms) VALUES ('old', 0, 't', 'l', 0.5, '[]', 'm:1', 1.0)")
    log = TrafficLog(path)
    log.log_predictions([PredictionRecord("new", 1.0, "t", "l", 0.5, [("l", 0.5)], "m:1", 1.0, "client-7")])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT request_id, http_request_id FROM predictions ORDER BY seq").fetchall() == [
            ("old", None), ("new", "client-7")]
    assert list(log.read_window()["request_id"]) == ["old", "new"]
