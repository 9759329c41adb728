"""``tuneloop demo``: the whole loop on Banking77, end to end, on real processes.

1. initial training where ``scarce_intents`` intents keep ``scarce_examples`` rows each;
2. a real ``bentoml serve`` (127.0.0.1, free port) and a real ``tuneloop monitor`` subprocess;
3. ``in_distribution``: replayed test queries of the well-covered intents, 30% with feedback;
4. ``drift``: 60% of queries from the scarce intents, 30% with keyboard typos; feedback goes on;
5. the monitor detects the drift, retrains, gates and promotes; the service swaps under traffic;
6. ``after_retrain``: the same drifted traffic, served by the new champion.

The run folder ``<home>/runs/<run-id>/`` is itself a complete tuneloop home (model store,
traffic DB, reports, Evidently workspace), so ``tuneloop serve --home <run folder>`` serves its
champion afterwards; ``report.json`` there holds every figure.
"""

from __future__ import annotations

import json
import os
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from monitoring.demo_data import Query, build_pools, make_queries, write_training_data
from monitoring.demo_report import build_report
from monitoring.replay import Replayer
from serving.launch import free_port, running_server, stop_server
from training.config import TrainConfig
from training.data import clean, normalise, read_source
from training.home import Home
from training.train import train

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    """The demo's knobs; ``quick`` picks smaller phases and the quick training preset."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Banking77 folder (train.csv, test.csv with text, category) or hf:PolyAI/banking77.")
    quick: bool = Field(False, description="Quick preset: minutes on 2 CPU cores.")
    scarce_intents: int = Field(10, ge=0, description="Intents that keep only scarce_examples training rows.")
    scarce_examples: int = Field(5, ge=1, description="Training rows kept per scarce intent.")
    feedback_share: float = Field(0.3, ge=0, le=1, description="Share of answered requests that get a true label.")
    drift_scarce_share: float = Field(0.6, ge=0, le=1, description="Share of drift-phase queries from scarce intents.")
    typo_share: float = Field(0.3, ge=0, le=1, description="Share of drift-phase queries given keyboard typos.")
    in_distribution_requests: int | None = Field(None, ge=1, description="Requests in phase in_distribution.")
    after_retrain_requests: int | None = Field(None, ge=1, description="Requests in phase after_retrain.")
    max_drift_requests: int = Field(6000, ge=1, description="Cap on drift-phase requests (waiting for the swap).")
    rate: float = Field(25.0, gt=0, description="Requests per second.")
    retrain_rate: float = Field(3.0, gt=0, description="Requests per second while a challenger trains (shared CPU).")
    clients: int = Field(4, ge=1, le=64, description="Concurrent client threads.")
    monitor_interval: float = Field(1.0, gt=0, description="Seconds between monitor checks (windows then close at min_window rows).")
    min_window: int = Field(100, ge=10, description="Smallest window the monitor judges.")
    min_new_labels: int = Field(300, ge=0, description="Labels needed before a retrain.")
    seed: int = Field(0, description="Seeds intents, pools, queries, typos and feedback.")
    timeout_minutes: float | None = Field(None, gt=0, description="Give up waiting for the swap after this long.")

    def resolved(self) -> "DemoConfig":
        """Fill the preset-dependent defaults."""
        q = self.quick
        return self.model_copy(update={
            "in_distribution_requests": self.in_distribution_requests or (400 if q else 1000),
            "after_retrain_requests": self.after_retrain_requests or (400 if q else 1000),
            "timeout_minutes": self.timeout_minutes or (12.0 if q else 60.0),
        })


def load_banking77(source: str):
    """Banking77 train and test frames (columns text, label), cleaned."""
    frames = read_source(source)
    if "test" not in frames:
        raise ValueError(f"{source}: the demo needs a train and a test split")
    return tuple(clean(normalise(frames[s], "text", "category" if "category" in frames[s] else "label", s))[0]
                 for s in ("train", "test"))


@contextmanager
def monitor_process(home: Home, cfg: DemoConfig, preset: str) -> Iterator[str]:
    """Run ``tuneloop monitor`` for ``home`` as a subprocess; yields its metrics URL."""
    port = free_port()
    config_path = home.root / "monitor.yaml"
    config_path.write_text(yaml.safe_dump({
        "interval_seconds": cfg.monitor_interval, "metrics_port": port,
        "policy": {"min_window": cfg.min_window, "min_new_labels": cfg.min_new_labels},
        "retrain": {"preset": preset},
    }))
    log_path = home.root / "logs" / "monitor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen([sys.executable, "-m", "monitoring.cli", "monitor", "--home", str(home.root),
                                 "--config", str(config_path)], stdout=log_fh, stderr=subprocess.STDOUT,
                                env={**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, **home.env()})
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_server(proc, timeout_s=30)


def _retraining(metrics_url: str) -> bool:
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("tuneloop_monitor_retraining ") and not line.endswith(" 0.0") for line in text.splitlines())


def run_demo(cfg: DemoConfig, home: Home) -> tuple[dict, Path]:
    """Run the demo; returns ``(report, run_dir)``. See the module docstring."""
    cfg = cfg.resolved()
    started = time.time()
    run_dir = home.runs_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    run_home = Home(run_dir).ensure()
    train_df, test_df = load_banking77(cfg.data)
    pools = build_pools(train_df, test_df, cfg.scarce_intents, cfg.scarce_examples, cfg.seed)
    data_dir = write_training_data(pools, run_dir / "data")
    preset = "quick" if cfg.quick else "full"
    log.info("initial training (%s preset) on %d rows", preset, len(pools.initial_train))
    initial = train(TrainConfig.for_preset(preset, data=str(data_dir), seed=cfg.seed), run_home)
    rng = random.Random(cfg.seed)
    queries_in = make_queries(pools, cfg.in_distribution_requests, 0.0, 0.0, rng)

    def drift_queries() -> Iterator[Query]:
        while True:
            yield from make_queries(pools, 50, cfg.drift_scarce_share, cfg.typo_share, rng)

    env = {"TUNELOOP_POLL_SECONDS": "1", "TUNELOOP_MAX_LATENCY_MS": "60000"}
    with running_server(run_home, env=env, ready_timeout=180) as server, \
            monitor_process(run_home, cfg, preset) as metrics_url:
        replay = Replayer(server.url, clients=cfg.clients, feedback_share=cfg.feedback_share, seed=cfg.seed)
        try:
            replay.run("in_distribution", iter(queries_in), rate=lambda: cfg.rate)
            deadline = time.time() + cfg.timeout_minutes * 60
            state = {"checked": 0.0, "retraining": False}

            def drift_rate() -> float:
                if time.time() - state["checked"] > 1.0:
                    state["checked"], state["retraining"] = time.time(), _retraining(metrics_url)
                return cfg.retrain_rate if state["retraining"] else cfg.rate

            def swapped() -> bool:
                last = replay.outcomes[-cfg.clients * 2:]
                return time.time() > deadline or any(o.ok and o.model_tag != initial.tag for o in last)

            replay.run("drift", drift_queries(), rate=drift_rate, stop=swapped, max_requests=cfg.max_drift_requests)
            if any(o.ok and o.model_tag != initial.tag for o in replay.outcomes):
                replay.run("after_retrain", drift_queries(), rate=lambda: cfg.rate,
                           max_requests=cfg.after_retrain_requests)
            time.sleep(cfg.monitor_interval * 2)  # let the monitor judge the last window
        finally:
            replay.close()
    report = build_report(cfg, run_home, pools, initial, test_df, replay.outcomes, started)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report, run_dir
