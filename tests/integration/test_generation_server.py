"""A real ``bentoml serve`` on 127.0.0.1 whose champion is a tiny random causal LM: /generate plain
and streamed (server-sent events), /v1/chat/completions through the official ``openai`` client,
/feedback for replies, 4xx answers, batching of concurrent requests, the traffic log and the
generation metrics in /metrics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import save_tiny_llm
from test_service_server import metric

REQUEST_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def served_llm(tmp_path_factory):
    """(home, server handle): a served home whose champion is the tiny random LM."""
    from tuneloop.serving.launch import running_server
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote

    home = Home(tmp_path_factory.mktemp("served-llm") / "home").ensure()
    promote(home, save_tiny_llm(home), reason="first model")
    env = {"TUNELOOP_POLL_SECONDS": "3600", "TUNELOOP_GEN_BATCH_WINDOW_MS": "50", "TUNELOOP_GEN_MAX_NEW_TOKENS": "64"}
    with running_server(home, env=env, ready_timeout=90) as server:
        yield home, server


@pytest.fixture()
def http(served_llm):
    with httpx.Client(base_url=served_llm[1].url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def sse_events(text: str) -> list:
    """The JSON payloads of a server-sent event stream, ``"[DONE]"`` kept as is."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def logged(home) -> dict:
    """request_id -> read_window row of the served home's traffic log."""
    from tuneloop.state.traffic_store import TrafficLog

    window = TrafficLog(home.traffic_db_path).read_window()
    return {row["request_id"]: row for _, row in window.iterrows()}


def test_generate_plain_and_streamed_are_logged(served_llm, http):
    home, _ = served_llm
    from tuneloop.state.registry import read_champion

    tag = read_champion(home).tag
    r = http.post("/generate", json={"prompt": "where is my order?", "max_new_tokens": 5})
    assert r.status_code == 200, r.text
    plain = r.json()
    assert set(plain) == {"text", "finish_reason", "prompt_tokens", "completion_tokens", "model_tag", "request_id"}
    assert (plain["finish_reason"], plain["completion_tokens"], plain["model_tag"]) == ("length", 5, tag)
    assert plain["prompt_tokens"] > 0 and plain["text"]

    with http.stream("POST", "/generate", json={"messages": [{"role": "system", "content": "be kind"},
                                                             {"role": "user", "content": "refund please"}],
                                               "max_new_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    final, pieces = events[-2], events[:-2]
    assert pieces and all(set(p) == {"text"} for p in pieces)
    assert (final["finish_reason"], final["completion_tokens"], final["model_tag"]) == ("length", 4, tag)

    rows = logged(home)
    row = rows[plain["request_id"]]
    assert (row["text"], row["reply"], row["label"], row["completion_tokens"]) == (
        "where is my order?", plain["text"], "length", 5)
    assert row["top3"] == "[]" and 0 < row["confidence"] <= 1
    streamed = rows[final["request_id"]]
    assert streamed["text"] == "refund please" and streamed["reply"] == "".join(p["text"] for p in pieces)


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompt": "   "}, 400, "empty or only whitespace"),
    ({}, 400, "exactly one of `prompt`"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 400, "exactly one of `prompt`"),
    ({"messages": [{"role": "assistant", "content": "hello"}]}, 400, "user message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "'system', 'user' or 'assistant'"),
    ({"prompt": "hi", "max_new_tokens": 0}, 400, "greater than or equal to 1"),
    ({"prompt": "hi", "max_new_tokens": 65}, 400, "less than or equal to 64"),
    ({"prompt": "hi", "temperature": 2.5}, 400, "less than or equal to 2"),
    ({"prompt": "hi", "top_p": 0}, 400, "greater than 0"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 items"),
    ({"prompt": "hi", "stop": ["x" * 33]}, 400, "at most 32 characters"),
    ({"prompt": "word " * 1500}, 400, "the limit is 1024"),  # more tokens than the model takes
    ({"prompt": "x" * 8001}, 400, "at most 8000 characters"),
])
def test_bad_generate_input_gets_4xx_that_says_why(http, body, status, message):
    r = http.post("/generate", json=body)
    assert r.status_code == status, r.text
    answer = r.json()
    assert message in answer["error"] or any(message in d["msg"] for d in answer.get("detail", [])), answer


def test_classifier_endpoints_refuse_politely_and_feedback_takes_replies(served_llm, http):
    home, _ = served_llm
    r = http.post("/classify", json={"texts": ["hello"]})
    assert r.status_code == 409 and "generation model" in r.json()["error"] and "/generate" in r.json()["error"]
    rid = http.post("/generate", json={"prompt": "cancel my order", "max_new_tokens": 2}).json()["request_id"]
    assert http.post("/feedback", json={"request_id": rid, "rating": "bad"}).json() == {
        "request_id": rid, "reply": None, "rating": "bad", "recorded": True, "reviewer": None, "replaced": False}
    r = http.post("/feedback", json={"request_id": rid, "reply": "Your order is cancelled.", "rating": "good"})
    assert r.status_code == 200 and r.json()["recorded"] is True and r.json()["replaced"] is True
    assert http.post("/feedback", json={"request_id": "0" * 32, "rating": "good"}).status_code == 404
    r = http.post("/feedback", json={"request_id": rid})
    assert r.status_code == 422 and "`reply`" in r.json()["error"]
    r = http.post("/feedback", json={"request_id": rid, "label": "refund"})
    assert r.status_code == 422 and "generates replies" in r.json()["error"]
    assert http.post("/feedback", json={"request_id": rid, "rating": "meh"}).status_code == 400
    from tuneloop.state.traffic_store import TrafficLog

    labelled = TrafficLog(home.traffic_db_path).labelled()
    row = labelled[labelled["request_id"] == rid].iloc[0]
    assert (row["true_reply"], row["rating"], row["text"]) == ("Your order is cancelled.", 1, "cancel my order")


def test_openai_client_plain_and_streamed(served_llm, http):
    import openai

    home, server = served_llm
    from tuneloop.state.registry import read_champion

    tag = read_champion(home).tag
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    assert [m.id for m in client.models.list().data] == [tag]
    messages = [{"role": "user", "content": "I want a refund"}]
    done = client.chat.completions.create(model="anything", messages=messages, max_tokens=6, temperature=0)
    assert done.model == tag and done.object == "chat.completion" and len(done.choices) == 1
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.role == "assistant"
    assert done.usage.completion_tokens == 6 and done.usage.total_tokens == done.usage.prompt_tokens + 6
    chunks = list(client.chat.completions.create(model=tag, messages=messages, max_completion_tokens=5, stream=True,
                                                 stop=["zzz"]))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == done.choices[0].message.content.rsplit(" ", 1)[0]  # greedy: 5 of the same 6 tokens
    with pytest.raises(openai.BadRequestError, match="one choice"):
        client.chat.completions.create(model=tag, messages=messages, n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens: Input should be less than or equal to 64") as info:
        client.chat.completions.create(model=tag, messages=messages, max_tokens=65)
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["param"] == "max_tokens"
    rows = logged(home)
    assert rows[done.id]["reply"] == done.choices[0].message.content and rows[chunks[0].id]["reply"] == text
    assert rows[done.id]["text"] == "I want a refund"


def test_concurrent_requests_are_batched_logged_and_measured(served_llm, http):
    home, server = served_llm
    before = http.get("/metrics").text
    n = 12

    def generate(i: int) -> dict:
        body = {"prompt": f"order {i} is late", "max_new_tokens": 3 + i % 3, "stream": i % 2 == 1}
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
            r = client.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json() if not body["stream"] else sse_events(r.text)[-2]

    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(generate, range(n)))
    assert http.post("/generate", json={"prompt": " "}).status_code == 400
    after = http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    tokens = sum(a["completion_tokens"] for a in answers)
    assert [a["completion_tokens"] for a in answers] == [3 + i % 3 for i in range(n)]
    assert delta("tuneloop_generations_total", reason="length") == n
    assert delta("tuneloop_generation_tokens_total") == tokens
    assert delta("tuneloop_generation_prompt_tokens_total") == sum(a["prompt_tokens"] for a in answers)
    assert delta("tuneloop_generation_time_to_first_token_seconds_count") == n
    assert delta("tuneloop_generation_inter_token_latency_seconds_count") == tokens - n
    assert delta("tuneloop_generation_batch_size_sum") == n
    assert 0 < delta("tuneloop_generation_batch_size_count") < n  # concurrent requests shared generate calls
    assert delta("tuneloop_requests_total", endpoint="/generate") == n + 1
    assert delta("tuneloop_request_errors_total", endpoint="/generate", reason="invalid_input") == 1
    assert 'tuneloop_generation_inter_token_latency_seconds_bucket{le="0.001"}' in after
    rows = logged(home)  # acknowledged => logged, with the reply the client saw
    assert all(rows[a["request_id"]]["completion_tokens"] == a["completion_tokens"] for a in answers)
    assert all(rows[a["request_id"]]["model_tag"] == a["model_tag"] for a in answers)


def test_openapi_documents_the_generation_endpoints(http):
    spec = http.get("/docs.json").json()
    for route in ("/generate", "/v1/chat/completions"):
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "409", "503"} <= set(responses)
        assert {"application/json", "text/event-stream"} <= set(responses["200"]["content"])
    assert "/v1/models" in spec["paths"] and "409" in spec["paths"]["/classify"]["post"]["responses"]
