"""``tuneloop demo --task generation``: the whole loop with a reply generator, on real processes.

1. initial training (the generation ``quick`` preset: SmolLM2-135M-Instruct + LoRA) on the Bitext
   customer-support pairs, where ``scarce_categories`` categories keep only ``scarce_examples``
   requests per intent — topics the model barely saw;
2. a real ``bentoml serve`` and a real ``tuneloop monitor`` (generation signals: prompt drift, reply
   descriptors, log-probability, live ROUGE-L from reviewers' replies);
3. ``in_distribution``: test requests of the well-covered categories; ``feedback_share`` of the
   answers get the data set's reply as the reviewer's corrected reply (``/feedback``);
4. ``drift``: ``drift_scarce_share`` of the requests from the scarce categories, ``typo_share`` with
   keyboard typos; feedback goes on;
5. the monitor detects the drift, retrains on the original data plus the reviewers' replies, gates
   (ROUGE-L of greedy replies on the holdout sample, perplexity must not get worse), promotes; the
   service swaps while traffic flows;
6. ``after_retrain``: the same drifted traffic, served by the new champion.

Live ROUGE-L: each answer against the data set's reply for its request (the demo knows every one).
The run folder is a complete tuneloop home; ``report.json`` holds every figure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.apps.demo import (
    PID_FILE,
    DemoFailed,
    _retraining,
    mark_failed,
    monitor_process,
    run_home_of,
    sweep_interrupted_runs,
)
from tuneloop.serving.launch import running_server
from tuneloop.state.home import Home
from tuneloop.training.augment import keyboard_typos
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import read_source
from tuneloop.training.train import train

log = logging.getLogger(__name__)
PHASES = ("in_distribution", "drift", "after_retrain")


class GenDemoConfig(BaseModel):
    """The generation demo's knobs (``quick``: the quick training preset and short phases)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Bitext folder: train.csv and test.csv with instruction, response, intent, category.")
    quick: bool = Field(True, description="Quick preset: minutes on 2 CPU cores.")
    scarce_categories: int = Field(2, ge=1, description="Categories whose intents keep only scarce_examples rows.")
    scarce_examples: int = Field(1, ge=1, description="Training requests kept per intent of a scarce category.")
    per_intent: int = Field(6, ge=1, description="Training requests per intent of the other categories.")
    holdout_per_intent: int = Field(8, ge=1, description="Test requests per intent kept for evaluation, the gate and "
                                    "the drift reference's prompts: with 2 (54 prompts) the text domain classifier "
                                    "reached ROC AUC 0.54 on 303 drifted requests; with 8, on windows of 64 drifted "
                                    "requests its median p was 0.01 vs 0.04 (10 seeded windows each, measured).")
    feedback_share: float = Field(0.5, ge=0, le=1, description="Share of answers that get the reviewer's reply.")
    drift_scarce_share: float = Field(0.8, ge=0, le=1, description="Share of drift requests from scarce categories.")
    typo_share: float = Field(0.3, ge=0, le=1, description="Share of drift requests given keyboard typos.")
    in_distribution_requests: int = Field(64, ge=1)
    after_retrain_requests: int = Field(64, ge=1)
    max_drift_requests: int = Field(800, ge=1, description="Cap on drift requests (waiting for the swap).")
    clients: int = Field(8, ge=1, le=64, description="Requests in flight (the service batches up to 8).")
    retrain_clients: int = Field(0, ge=0, description="Requests in flight while a challenger trains: with 1, a "
                                 "training step took ~60 s instead of ~12 s on 2 cores (measured), so traffic "
                                 "pauses and resumes when the retrain ends, as the new champion swaps in.")
    max_new_tokens: int = Field(64, ge=1, le=512, description="Token budget of each live reply.")
    monitor_interval: float = Field(2.0, gt=0)
    min_window: int = Field(64, ge=10, description="Smallest window the monitor judges (with 32, only the "
                            "embedding test fired on drifted windows; 64 = the in_distribution phase).")
    min_new_labels: int = Field(30, ge=0, description="Reviewer replies needed before a retrain.")
    feedback_weight: int = Field(1, ge=1, description="Times each reviewer reply is trained on (CPU minutes grow with it).")
    eval_rows: int = Field(16, ge=1, description="Holdout rows whose greedy replies evaluation and the gate score.")
    seed: int = 0
    timeout_minutes: float = Field(25.0, gt=0, description="Give up waiting for the swap after this long.")


@dataclass
class Pools:
    """The demo's rows (columns instruction, response, intent, category)."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    replay_known: pd.DataFrame
    replay_scarce: pd.DataFrame
    scarce_categories: list[str]


def build_pools(cfg: GenDemoConfig) -> Pools:
    """Seeded pools from the data's train and test splits (see the module docstring).

    Raises:
        ValueError: the data has no test split or lacks the columns.
    """
    frames = read_source(cfg.data)
    if "test" not in frames:
        raise ValueError(f"{cfg.data}: the demo needs a train and a test split")
    train_df, test_df = (frames[s].dropna(subset=["instruction", "response", "intent", "category"]) for s in ("train", "test"))
    rng = random.Random(cfg.seed)
    scarce = sorted(rng.sample(sorted(train_df["category"].unique()), cfg.scarce_categories))
    shuffled = train_df.sample(frac=1.0, random_state=cfg.seed)
    is_scarce = shuffled["category"].isin(scarce)
    rank = shuffled.groupby("intent").cumcount()
    keep = (~is_scarce & (rank < cfg.per_intent)) | (is_scarce & (rank < cfg.scarce_examples))
    test_shuffled = test_df.sample(frac=1.0, random_state=cfg.seed)
    in_holdout = test_shuffled.groupby("intent").cumcount() < cfg.holdout_per_intent
    replay = test_shuffled[~in_holdout]
    return Pools(train=shuffled[keep], holdout=test_shuffled[in_holdout],
                 replay_known=replay[~replay["category"].isin(scarce)],
                 replay_scarce=pd.concat([replay[replay["category"].isin(scarce)], shuffled[is_scarce & ~keep]]),
                 scarce_categories=scarce)


@dataclass
class Answer:
    """One replayed request's outcome."""

    index: int
    phase: str
    ok: bool
    status: int
    prompt: str
    reference: str
    reply: str | None
    model_tag: str | None
    request_id: str | None
    finish_reason: str | None
    latency_s: float
    sent_at: float
    noisy: bool
    feedback: bool
    error: str | None = None


class GenReplayer:
    """Sends requests to ``/generate`` with at most ``clients`` in flight (fewer while the monitor
    retrains), and the data set's reply to ``/feedback`` for a seeded share of the answers."""

    def __init__(self, url: str, cfg: GenDemoConfig, metrics_url: str) -> None:
        self.url, self.cfg, self.metrics_url = url, cfg, metrics_url
        self.rng = random.Random(cfg.seed + 1)
        self.answers: list[Answer] = []
        self._next_index = 0

    def run(self, phase: str, rows, stop=lambda answers: False, max_requests: int = 10_000) -> None:
        asyncio.run(self._run(phase, rows, stop, max_requests))

    async def _run(self, phase, rows, stop, max_requests) -> None:
        sent, state = [0], {"retraining": False, "checked": 0.0, "stop": False}
        async with httpx.AsyncClient(timeout=300) as client:
            async def worker(slot: int) -> None:
                while not state["stop"] and sent[0] < max_requests:
                    if time.time() - state["checked"] > 2:
                        state["checked"] = time.time()
                        state["retraining"] = await asyncio.to_thread(_retraining, self.metrics_url)
                    if state["retraining"] and slot >= self.cfg.retrain_clients:
                        await asyncio.sleep(1.0)
                        continue
                    try:
                        prompt, reference, noisy = next(rows)
                    except StopIteration:
                        return
                    index, self._next_index = self._next_index, self._next_index + 1  # sending order, all phases
                    sent[0] += 1
                    answer = await self._one(client, phase, index, prompt, reference, noisy)
                    self.answers.append(answer)
                    if stop(self.answers):
                        state["stop"] = True

            await asyncio.gather(*(worker(i) for i in range(self.cfg.clients)))

    async def _one(self, client, phase, index, prompt, reference, noisy) -> Answer:
        start, sent_at = time.perf_counter(), time.time()
        give = self.rng.random() < self.cfg.feedback_share
        try:
            resp = await client.post(f"{self.url}/generate", json={"prompt": prompt, "max_new_tokens": self.cfg.max_new_tokens})
            body = resp.json()
            ok = resp.status_code == 200
            answer = Answer(index, phase, ok, resp.status_code, prompt, reference, body.get("text"), body.get("model_tag"),
                            body.get("request_id"), body.get("finish_reason"), time.perf_counter() - start, sent_at,
                            noisy, give and ok, None if ok else json.dumps(body)[:300])
            if answer.feedback:
                fb = await client.post(f"{self.url}/feedback", json={"request_id": answer.request_id, "reply": reference})
                answer.feedback = fb.status_code == 200
        except (httpx.HTTPError, ValueError) as exc:
            answer = Answer(index, phase, False, 0, prompt, reference, None, None, None, None,
                            time.perf_counter() - start, sent_at, noisy, False, f"{type(exc).__name__}: {exc}")
        return answer


def _queries(known: pd.DataFrame, scarce: pd.DataFrame, scarce_share: float, typo_share: float, rng: random.Random):
    """Endless (prompt, reference reply, noisy) triples."""
    while True:
        pool = scarce if (len(scarce) and rng.random() < scarce_share) else known
        row = pool.iloc[rng.randrange(len(pool))]
        prompt, noisy = str(row["instruction"]), rng.random() < typo_share
        if noisy:
            prompt = keyboard_typos(prompt, rng)
        yield prompt, str(row["response"]), noisy


def run_gen_demo(cfg: GenDemoConfig, home: Home) -> tuple[dict, Path]:
    """Run the generation demo; returns ``(report, run_dir)``.

    Raises:
        DemoFailed: a stage failed; the run folder is renamed ``<run>.failed`` with ``error.txt``.
    """
    started = time.time()
    pools = build_pools(cfg)  # bad input fails here, before any run folder exists
    home.runs_dir.mkdir(parents=True, exist_ok=True)
    for swept in sweep_interrupted_runs(home.runs_dir):
        log.warning("an earlier demo run was interrupted: moved to %s", swept)
    run_dir = home.runs_dir / time.strftime("demo-generation-%Y%m%d-%H%M%S")
    run_home = run_home_of(home, run_dir).ensure()
    (run_dir / PID_FILE).write_text(str(os.getpid()))
    stage = ["writing the training data"]
    try:
        report = _stages(cfg, run_dir, run_home, pools, started, stage)
    except BaseException as exc:
        import traceback

        failed = mark_failed(run_dir, f"stage: {stage[0]}\n\n{traceback.format_exc()}")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise DemoFailed(stage[0], failed, exc) from exc
    (run_dir / PID_FILE).unlink(missing_ok=True)
    return report, run_dir


def _stages(cfg: GenDemoConfig, run_dir: Path, run_home: Home, pools: Pools, started: float, stage: list[str]) -> dict:
    from tuneloop.apps.gen_demo_report import build_gen_report

    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    pools.train.to_csv(data_dir / "train.csv", index=False)
    pools.holdout.to_csv(data_dir / "test.csv", index=False)
    stage[0] = "initial training"
    # the reference replies (the scored holdout replies) get the live requests' token budget, so reply length
    # and stop rate compare like with like: with 96 vs 64 tokens reply_drift fired in every in-distribution window
    train_cfg = TrainConfig.for_preset("quick", task="generation", data=str(data_dir), text_column="instruction",
                                       response_column="response", max_train_per_label=10_000, eval_rows=cfg.eval_rows,
                                       eval_max_new_tokens=cfg.max_new_tokens, compare_base=False, seed=cfg.seed)
    initial = train(train_cfg, run_home)
    rng = random.Random(cfg.seed)
    in_dist = _queries(pools.replay_known, pools.replay_known, 0.0, 0.0, rng)
    drift = _queries(pools.replay_known, pools.replay_scarce, cfg.drift_scarce_share, cfg.typo_share, rng)
    retrain = {"feedback_weight": cfg.feedback_weight,
               "overrides": {"compare_base": False, "eval_rows": cfg.eval_rows, "eval_max_new_tokens": cfg.max_new_tokens}}
    stage[0] = "starting the service and the monitor"
    # replies take seconds and a retrain shares the CPU: generous queue and request limits
    env = {"TUNELOOP_POLL_SECONDS": "1", "TUNELOOP_MAX_LATENCY_MS": "300000", "TUNELOOP_REQUEST_TIMEOUT_S": "600",
           "TUNELOOP_TORCH_THREADS": "2"}
    with running_server(run_home, env=env, ready_timeout=300) as server, \
            monitor_process(run_home, cfg, "quick", retrain=retrain) as metrics_url:
        replay = GenReplayer(server.url, cfg, metrics_url)
        stage[0] = "phase in_distribution"
        replay.run("in_distribution", in_dist, max_requests=cfg.in_distribution_requests)
        deadline = time.time() + cfg.timeout_minutes * 60

        def swapped(answers: list[Answer]) -> bool:
            return time.time() > deadline or any(a.ok and a.model_tag != initial.tag for a in answers[-cfg.clients:])

        stage[0] = "phase drift (waiting for detection, retraining and the swap)"
        replay.run("drift", drift, stop=swapped, max_requests=cfg.max_drift_requests)
        if any(a.ok and a.model_tag != initial.tag for a in replay.answers):
            stage[0] = "phase after_retrain"
            replay.run("after_retrain", drift, max_requests=cfg.after_retrain_requests)
        time.sleep(cfg.monitor_interval * 2)
    stage[0] = "writing the report"
    report = build_gen_report(cfg, run_home, pools, initial, [asdict(a) for a in replay.answers], started)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report
