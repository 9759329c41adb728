"""The generation engine (serving/gen_batcher.py) on a tiny random causal LM: concurrent requests
merge into one ``generate`` call per sampling setting, each row keeps its own budget and stop
strings, streamed pieces add up to the logged reply, answers wait for their commit, and a swap
in the middle of a stream leaves it on the model it started with."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest

GREEDY_WORD = "assistant"  # the tiny random LM's greedy reply repeats this word (seed 0)


@dataclass
class Holder:
    """A stand-in for the ChampionHolder: the engine reads ``live`` once per batch."""

    live: Any = None

    def __call__(self):
        return self.live


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from conftest import write_tiny_llm

    from tuneloop.serving.champion import LiveModel
    from tuneloop.training.generator import Generator

    out = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"llm{seed}")
        write_tiny_llm(path, seed=seed)
        out.append(LiveModel(tag=f"tiny-llm:v{seed}", classifier=Generator.load(path, device="cpu"), task="generation"))
    return out


def make_engine(holder, reports=None, log=None, **kwargs):
    from tuneloop.serving.gen_batcher import GenerationEngine

    kwargs = {"max_batch_size": 8, "window_s": 0.05, "max_queue": 16, "max_wait_s": 30.0, **kwargs}
    return GenerationEngine(holder, log, on_batch=reports.append if reports is not None else None, **kwargs)


def params(prompt="where is my order?", max_new_tokens=6, temperature=0.0, top_p=1.0, stop=()):
    from tuneloop.serving.gen_batcher import GenerationParams
    from tuneloop.serving.generation import logged_text

    return GenerationParams(prompt, logged_text(prompt), max_new_tokens, temperature, top_p, tuple(stop))


async def collect(stream):
    """(pieces, Finished) of one stream."""
    from tuneloop.serving.gen_batcher import Finished

    pieces = []
    async for event in stream:
        if isinstance(event, Finished):
            return pieces, event
        pieces.append(event.text)
    raise AssertionError("no Finished event")


def run(engine, requests):
    """Submit every (params, request_id) at once and collect all streams."""

    async def main():
        streams = [engine.submit(p, rid, time.time(), f"http-{rid}") for p, rid in requests]
        return await asyncio.gather(*(collect(s) for s in streams))

    try:
        return asyncio.run(main())
    finally:
        engine.close()


def test_concurrent_requests_share_generate_calls_grouped_by_sampling(models):
    reports = []
    engine = make_engine(Holder(models[0]), reports, max_batch_size=4)
    greedy = [(params(f"order {i}?", max_new_tokens=3), f"g{i}") for i in range(6)]
    sampled = [(params(f"refund {i}", max_new_tokens=3, temperature=0.8, top_p=0.9), f"s{i}") for i in range(2)]
    results = run(engine, greedy[:3] + sampled[:1] + greedy[3:] + sampled[1:])
    # 8 requests, 3 calls: the oldest's setting first (4 greedy rows: the batch limit), then the
    # sampled pair (the oldest left), then the last 2 greedy rows
    assert [r.rows for r in reports] == [4, 2, 2]
    assert all(r.model_tag == "tiny-llm:v0" and r.seconds > 0 and r.oldest_wait_s >= 0 for r in reports)
    assert sum(r.rows for r in reports) == len(results) == 8
    for pieces, done in results:
        g = done.record.generation
        assert done.record.model_tag == "tiny-llm:v0" and g.completion_tokens == 3 and g.finish_reason == "length"
        assert "".join(pieces) == g.reply == done.completion.text
        assert g.first_token_ms is not None and 0 < g.first_token_ms <= done.record.latency_ms + 1
    ids = [done.record.request_id for _, done in results]
    assert ids == [rid for _, rid in greedy[:3] + sampled[:1] + greedy[3:] + sampled[1:]]


def test_each_row_keeps_its_budget_and_the_record_says_what_it_generated(models):
    reports = []
    engine = make_engine(Holder(models[0]), reports)
    budgets = [1, 4, 9]
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "cancel my order"},
            {"role": "assistant", "content": "which one?"}, {"role": "user", "content": "number 7"}]
    results = run(engine, [(params(chat if b == 4 else f"req {b}", max_new_tokens=b), f"r{b}") for b in budgets])
    assert [r.rows for r in reports] == [3]
    for budget, (pieces, done) in zip(budgets, results):
        rec, g = done.record, done.record.generation
        assert (g.completion_tokens, g.finish_reason, rec.label) == (budget, "length", "length")
        assert g.reply.split() == [GREEDY_WORD] * budget and "".join(pieces) == g.reply
        assert g.prompt_tokens == models[0].classifier.prompt_tokens(chat if budget == 4 else f"req {budget}")
        assert rec.confidence == pytest.approx(2.718281828 ** g.mean_logprob) and rec.top3 == []
        assert rec.http_request_id == f"http-r{budget}"
    assert results[1][1].record.text == "number 7"  # a chat is logged as its last user message


def test_stop_strings_cut_the_reply_per_row(models):
    engine = make_engine(Holder(models[0]))
    w = GREEDY_WORD
    results = run(engine, [
        (params(max_new_tokens=8, stop=[" "]), "a"),  # the space before the 2nd word: cut after the 1st
        (params(max_new_tokens=8, stop=["zzz", w]), "b"),  # the first token is a stop: nothing at all
        (params(max_new_tokens=8, stop=["zzz", f"{w[:4]}X"]), "c"),  # never matches: the whole budget
    ])
    (pa, a), (pb, b), (pc, c) = results
    assert (a.record.generation.reply, a.record.generation.finish_reason, pa) == (w, "stop", [w])
    assert a.record.generation.completion_tokens == 2
    assert (b.record.generation.reply, b.record.generation.finish_reason, pb) == ("", "stop", [])
    assert b.record.generation.completion_tokens == 1
    assert c.record.generation.finish_reason == "length" and "".join(pc) == c.record.generation.reply == " ".join([w] * 8)


def test_multi_token_stop_strings_are_cut_and_never_streamed(models):
    engine = make_engine(Holder(models[0]))
    w = GREEDY_WORD
    (pa, a), (pb, b) = run(engine, [
        (params(max_new_tokens=8, stop=[f" {w} {w}"]), "a"),  # completes at the 3rd word: cut after the 1st
        (params(max_new_tokens=8, stop=[f"{w} {w} {w}"]), "b"),  # matches at 0: nothing at all
    ])
    assert pa == [w] and pb == []  # no piece of a stop string was streamed
    assert (a.record.generation.reply, a.record.generation.finish_reason) == (w, "stop")
    assert (b.record.generation.reply, b.record.generation.finish_reason) == ("", "stop")


def test_answers_wait_for_the_log_commit(models):
    from tuneloop.serving.log_writer import LogWriteError

    pending: list[tuple[list, Future]] = []

    def log(records):
        future = Future()
        pending.append((records, future))
        return future

    engine = make_engine(Holder(models[0]), log=log)

    async def main():
        ok = engine.submit(params(max_new_tokens=2), "ok", time.time())
        first = await ok.__anext__()  # pieces stream before the commit
        await asyncio.sleep(0.3)
        assert [r.request_id for r in pending[0][0]] == ["ok"]
        finished = asyncio.ensure_future(ok.result())
        await asyncio.sleep(0.2)
        assert not finished.done()  # generated, not yet committed: no final answer
        threading.Timer(0.1, pending[0][1].set_result, [None]).start()
        done = await asyncio.wait_for(finished, 5)
        bad = engine.submit(params(max_new_tokens=2), "bad", time.time())
        while len(pending) < 2:
            await asyncio.sleep(0.02)
        pending[1][1].set_exception(LogWriteError("disk full"))
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(bad.result(), 5)
        return first, done

    try:
        first, done = asyncio.run(main())
    finally:
        engine.close()
    assert first.text == GREEDY_WORD and done.record.request_id == "ok"


def test_a_swap_mid_stream_keeps_the_stream_on_its_model(models):
    from tuneloop.serving.gen_batcher import Piece

    holder = Holder(models[0])
    engine = make_engine(holder, window_s=0.0)

    async def main():
        stream = engine.submit(params(max_new_tokens=60), "old", time.time())
        pieces = []
        async for event in stream:
            if isinstance(event, Piece):
                pieces.append(event.text)
                if len(pieces) == 1:
                    holder.live = models[1]  # the champion changes while the stream is in flight
            else:
                old = event
        new = await engine.submit(params(max_new_tokens=2), "new", time.time()).result()
        return pieces, old, new

    try:
        pieces, old, new = asyncio.run(main())
    finally:
        engine.close()
    assert old.record.model_tag == "tiny-llm:v0" and old.record.generation.completion_tokens == 60
    assert "".join(pieces) == old.record.generation.reply and len(pieces) > 1
    assert new.record.model_tag == "tiny-llm:v1"


def test_bounds_and_errors_fail_only_their_request(models):
    from tuneloop.serving.batcher import QueueFullError, QueueTimeoutError
    from tuneloop.serving.champion import LiveModel
    from tuneloop.serving.tasks import WrongTaskError
    from tuneloop.training.generator import PromptTooLongError

    gen = models[0].classifier
    limit = gen.prompt_tokens("short") + 2
    small = LiveModel(tag="tiny-llm:small", classifier=type(gen)(gen.tokenizer, gen.model, "cpu", limit), task="generation")
    engine = make_engine(Holder(small), max_queue=2, window_s=0.2)

    async def main():
        ok = engine.submit(params("short", max_new_tokens=2), "ok", time.time())
        long = engine.submit(params("a much longer prompt than the limit allows", max_new_tokens=2), "long", time.time())
        with pytest.raises(QueueFullError, match="limit 2"):
            engine.submit(params(), "third", time.time())
        with pytest.raises(PromptTooLongError, match=f"the limit is {limit}"):
            await long.result()
        return await ok.result()

    try:
        assert asyncio.run(main()).record.generation.completion_tokens == 2
    finally:
        engine.close()

    classifier_live = LiveModel(tag="tiny-clf:v1", classifier=None, task="classification")
    for holder, error, message in [(Holder(classifier_live), WrongTaskError, "classification model"),
                                   (Holder(None), QueueTimeoutError, "no model")]:
        engine = make_engine(holder)

        async def one(engine=engine):
            return await engine.submit(params(), "x", time.time()).result()

        try:
            with pytest.raises(error, match=message):
                asyncio.run(one())
        finally:
            engine.close()

    engine = make_engine(Holder(models[0]), max_wait_s=0.0, window_s=0.05)

    async def late():
        return await engine.submit(params(), "late", time.time()).result()

    try:
        with pytest.raises(QueueTimeoutError, match="waited"):
            asyncio.run(late())
    finally:
        engine.close()


def test_held_back_is_the_longest_stop_prefix_at_the_end():
    from tuneloop.serving.gen_batcher import held_back

    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello wor", ["xyz", "or!", "world"]) == 3
    assert held_back("hello", ["world"]) == 0 and held_back("", ["a"]) == 0 and held_back("abc", []) == 0
    assert held_back("aaa", ["aaab"]) == 3 and held_back("ab", ["b"]) == 0  # a whole stop is the generator's to cut
