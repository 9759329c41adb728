"""The post-swap watch end to end: a real ``bentoml serve`` (127.0.0.1, tiny random champion, following
the champion pointer every 0.2 s) under steady traffic with reviewers' feedback, monitor cycles run in
this process. A promoted model that is wrong on live traffic is rolled back within its watch window and
the service answers with the old tag again; a good promotion is kept; no request fails."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import TINY_LABELS, save_tiny_model, served_tiny_champion

pytestmark = [pytest.mark.timeout(300)]

TEXTS = ["where is my new card?", "I lost my card yesterday", "top up failed again", "how do I get a refund",
         "my card has not arrived", "refund my last top up please", "card stolen, block it", "money back"]
CLIENTS = 3
WATCH = {"requests": 60, "min_feedback": 20, "min_rows": 20}
CYCLE_PAUSE_S = 0.3
PHASE_TIMEOUT_S = 40.0


class Traffic:
    """Clients that classify a text and at once send the reviewer's label for it (``truth``); every
    failure (a non-2xx answer or a transport error) is kept."""

    def __init__(self, url: str, truth: dict[str, str]) -> None:
        self.url, self.truth = url, truth
        self.stop, self.failures, self.answered = threading.Event(), [], []
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(CLIENTS)]

    def run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = k
            while not self.stop.is_set():
                text = TEXTS[i % len(TEXTS)]
                i += CLIENTS
                try:
                    r = http.post("/classify", json={"texts": [text]})
                    if r.status_code != 200:
                        self.failures.append(("classify", r.status_code, r.text[:200]))
                        continue
                    (pred,) = r.json()
                    self.answered.append(pred["model_tag"])
                    f = http.post("/feedback", json={"request_id": pred["request_id"], "label": self.truth[text]})
                    if f.status_code != 200:
                        self.failures.append(("feedback", f.status_code, f.text[:200]))
                except httpx.HTTPError as exc:
                    self.failures.append(("transport", repr(exc)))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def cycle_until(monitor, done, timeout_s: float = PHASE_TIMEOUT_S) -> list:
    """Run monitor cycles until ``done(results)`` is true; returns every cycle's result."""
    results, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        results.append(monitor.cycle())
        if done(results):
            return results
        time.sleep(CYCLE_PAUSE_S)
    raise AssertionError(f"not done after {timeout_s} s: {[r.watch for r in results][-3:]}")


def wait_for_rows(traffic_log, tag: str, n: int) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        window = traffic_log.read_window(max(0, traffic_log.max_seq() - 4 * n))
        if (window["model_tag"] == tag).sum() >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{tag} did not answer {n} requests in {PHASE_TIMEOUT_S} s")


def gated(home, tag: str, accuracy: float) -> None:
    """The gate's verdict on ``tag`` as the retrain records it (its challenger accuracy)."""
    from tuneloop.state.events import GATED, EventLog

    EventLog(home.store_url).record(GATED, "gate passed (test)", tag=tag, actor="test",
                                    detail={"champion": {"accuracy": 0.9}, "challenger": {"accuracy": accuracy}})


def test_a_bad_promotion_is_rolled_back_and_a_good_one_kept(tmp_path_factory):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.state.events import BLOCKED, WATCHED, EventLog
    from tuneloop.state.registry import get_model, promote, read_champion
    from tuneloop.training.predict import Classifier

    env = {"TUNELOOP_POLL_SECONDS": "0.2"}
    with served_tiny_champion(tmp_path_factory, "watch", env, ready_timeout=120) as (home, server):
        old = read_champion(home).tag
        predicted, _ = Classifier.load(get_model(home, old).path, device="cpu").predict(TEXTS)
        truth = dict(zip(TEXTS, predicted))  # the reviewers agree with the champion on every text
        # the same weights with the label names rotated: every answer is a wrong (but known) label
        bad = save_tiny_model(home, labels=TINY_LABELS[1:] + TINY_LABELS[:1], seed=0)
        good = save_tiny_model(home, seed=0)  # the champion's weights under a new tag: right on every text
        for tag in (bad, good):
            gated(home, tag, accuracy=0.95)
        cfg = MonitorConfig(embeddings=False, save_html=False, evidently_project=None, label_queue_size=0,
                            metrics_port=None, policy={"min_window": 10**6}, watch=WATCH)
        monitor = Monitor(home, cfg)
        events = EventLog(home.store_url)

        with Traffic(server.url, truth) as traffic:
            wait_for_rows(monitor.traffic, old, WATCH["min_rows"])  # the previous champion's last window
            assert monitor.cycle().watch is None  # the first model: nothing to watch

            promote(home, bad, reason="forced (test)", actor="test")
            results = cycle_until(monitor, lambda rs: read_champion(home).tag != bad)
            look = results[-1].watch
            assert look["verdict"] == "rolled_back"
            assert WATCH["min_feedback"] <= look["served"] <= WATCH["requests"]  # within the watch window
            fired = [s for s in look["signals"] if s["fired"]]
            assert [s["name"] for s in fired] == ["feedback_accuracy"] and fired[0]["value"] == 0.0
            assert read_champion(home).tag == old and events.is_blocked(bad)
            assert events.events(tag=bad, kind=BLOCKED)[-1].actor == "monitor"
            assert [e.detail["verdict"] for e in events.events(tag=bad, kind=WATCHED)] == ["rolled_back"]
            assert monitor.metrics.rollbacks.family().samples[0].value == 1.0
            swapped_back = time.monotonic() + 10
            while traffic.answered[-1] != old and time.monotonic() < swapped_back:  # the service follows the pointer
                time.sleep(0.1)
            assert traffic.answered[-1] == old

            promote(home, good, reason="forced (test)", actor="test")
            results = cycle_until(monitor, lambda rs: rs[-1].watch is not None and rs[-1].watch["final"])
            look = results[-1].watch
            assert look["verdict"] == "kept" and look["served"] == WATCH["requests"]
            feedback = next(s for s in look["signals"] if s["name"] == "feedback_accuracy")
            assert feedback["value"] == 1.0 and feedback["n"] >= WATCH["min_feedback"]
            assert all(r.watch is None or r.watch["verdict"] != "rolled_back" for r in results)

        assert traffic.failures == []
        assert read_champion(home).tag == good and not events.is_blocked(good)
        assert [e.detail["verdict"] for e in events.events(tag=good, kind=WATCHED)] == ["kept"]
        assert monitor.metrics.rollbacks.family().samples[0].value == 1.0
        served = set(traffic.answered)
        assert {old, bad, good} <= served, served
