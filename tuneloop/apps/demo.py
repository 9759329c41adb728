"""``tuneloop demo``: the whole loop on Banking77, end to end, on real processes.

1. initial training where ``scarce_intents`` intents keep ``scarce_examples`` rows each;
2. a real ``bentoml serve`` (127.0.0.1, free port) and a real ``tuneloop monitor`` subprocess;
3. ``in_distribution``: replayed test queries of the well-covered intents, 30% with feedback;
4. ``drift``: 60% of queries from the scarce intents, 30% with keyboard typos; feedback goes on;
5. the monitor detects the drift, retrains, gates and promotes; the service swaps under traffic;
6. ``after_retrain``: the same drifted traffic, served by the new champion;
7. (``compare_warm_start``) one more retrain from the other warm start on the same feedback, gated and
   not promoted: time and holdout metric of both (:mod:`tuneloop.apps.demo_warm_start`).

The run folder ``<home>/runs/<run-id>/`` is itself a complete tuneloop home (model store,
traffic DB, reports, Evidently workspace), so ``tuneloop serve --home <run folder>`` serves its
champion afterwards; ``report.json`` there holds every figure.
"""

from __future__ import annotations

import json
import logging
import os
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

from tuneloop.apps.demo_data import Query, build_pools, make_queries, write_training_data
from tuneloop.apps.demo_report import build_report
from tuneloop.apps.demo_warm_start import compare_warm_starts, monitor_retrain_config, promoted_retrain
from tuneloop.apps.replay import Replayer
from tuneloop.serving.launch import free_port, running_server, stop_server
from tuneloop.state.home import Home
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import clean, normalise, read_source
from tuneloop.training.progress import QUIET_BARS_ENV
from tuneloop.training.train import train

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
    clients: int = Field(4, ge=1, le=64, description="Requests in flight at once (concurrent clients).")
    monitor_interval: float = Field(1.0, gt=0, description="Seconds between monitor checks (windows then close at min_window rows).")
    min_window: int = Field(100, ge=10, description="Smallest window the monitor judges.")
    min_new_labels: int = Field(300, ge=0, description="Labels needed before a retrain.")
    seed: int = Field(0, description="Seeds intents, pools, queries, typos and feedback.")
    timeout_minutes: float | None = Field(None, gt=0, description="Give up waiting for the swap after this long.")
    compare_warm_start: bool = Field(True, description="After the promotion, retrain once more from the other warm "
                                     "start on the same feedback (gated, not promoted): report.json's warm_start "
                                     "(time and holdout metric of both). One retrain more (~2 min quick).")

    def resolved(self) -> DemoConfig:
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
def monitor_process(home: Home, cfg: DemoConfig, preset: str, retrain: dict | None = None) -> Iterator[str]:
    """Run ``tuneloop monitor`` for ``home`` as a subprocess; yields its metrics URL. ``retrain``:
    more ``RetrainConfig`` fields (e.g. ``overrides``) beside the preset."""
    port = free_port()
    config_path = home.root / "monitor.yaml"
    config_path.write_text(yaml.safe_dump({
        "interval_seconds": cfg.monitor_interval, "metrics_port": port,
        "policy": {"min_window": cfg.min_window, "min_new_labels": cfg.min_new_labels},
        "retrain": {"preset": preset, **(retrain or {})},
    }))
    log_path = home.root / "logs" / "monitor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen([sys.executable, "-m", "tuneloop.apps.cli", "monitor", "--home", str(home.root),
                                 "--config", str(config_path)], stdout=log_fh, stderr=subprocess.STDOUT,
                                env={**QUIET_BARS_ENV, **{k: v for k, v in os.environ.items()
                                                          if k != "PROMETHEUS_MULTIPROC_DIR"}, **home.env()})
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_monitor(url, proc, log_path)
        yield url
    finally:
        stop_server(proc, timeout_s=30)


MONITOR_READY_TIMEOUT_S = 180.0  # the monitor's warm-up: a model load and ~1000 reference embeddings (14 s measured)


def wait_for_monitor(metrics_url: str, proc: subprocess.Popen, log_path: Path,
                     timeout_s: float = MONITOR_READY_TIMEOUT_S) -> None:
    """Wait until the monitor serves its metrics, which it starts after warming up on the champion,
    so that traffic begins when the first window can be judged promptly.

    Raises:
        RuntimeError: the monitor exited or was not up within ``timeout_s`` (the message says where its log is).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the monitor exited with status {proc.returncode}; see {log_path}")
        try:
            if httpx.get(metrics_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the monitor did not start within {timeout_s:.0f} s; see {log_path}")


def _retraining(metrics_url: str) -> bool:
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("tuneloop_monitor_retraining ") and not line.endswith(" 0.0") for line in text.splitlines())


class DemoFailed(RuntimeError):
    """The demo stopped before its report was written.

    Attributes:
        stage: where it stopped (``initial training``, ``starting the service``, a phase name, ...).
        run_dir: the run folder, renamed ``demo-<time>.failed`` (logs kept, ``error.txt`` says why).
    """

    def __init__(self, stage: str, run_dir: Path, cause: BaseException) -> None:
        self.stage, self.run_dir = stage, run_dir
        super().__init__(f"the demo failed during {stage}: {type(cause).__name__}: {cause}; "
                         f"logs and partial state kept in {run_dir}")


FAILED_SUFFIX = ".failed"
PID_FILE = "demo.pid"


def mark_failed(run_dir: Path, reason: str) -> Path:
    """Rename an unfinished run folder to ``<name>.failed`` and write ``error.txt`` in it.

    A finished run is recognisable by its ``report.json``; a failed one by its suffix, so neither
    ``tuneloop`` nor a person mistakes it for a complete run. Returns the new path.
    """
    target = run_dir.with_name(run_dir.name + FAILED_SUFFIX)
    run_dir.rename(target)
    (target / "error.txt").write_text(reason.rstrip() + "\n")
    return target


def run_home_of(home: Home, run_dir: Path) -> Home:
    """The home of one demo run: the folder ``run_dir``, with its traffic store in ``home``'s database
    when ``home`` names one (``--db-url``), else SQLite in ``run_dir``. Touches nothing on disk.

    Raises:
        ValueError: that database already holds traffic: a demo's windows, detection figures and
            report start from an empty store (give each run a fresh database).
    """
    run_home = Home(run_dir, db_url=home.db_url)
    if home.db_url:
        from tuneloop.state.store_engine import describe
        from tuneloop.state.traffic_store import TrafficLog

        traffic = TrafficLog(home.db_url)
        logged = traffic.max_seq()
        traffic.engine.dispose()
        if logged:
            raise ValueError(f"the traffic store {describe(home.db_url)} already holds traffic (seq up to {logged}): "
                             "the demo needs an empty database (create a fresh one for each run)")
    return run_home


def sweep_interrupted_runs(runs_dir: Path) -> list[Path]:
    """Mark as failed the run folders of demos that died without a report (killed, machine lost).

    A folder counts as interrupted when it has no ``report.json`` and the process in its
    ``demo.pid`` is gone. Returns the renamed folders.
    """
    swept = []
    for run_dir in sorted(runs_dir.glob("demo-*")):
        if run_dir.name.endswith(FAILED_SUFFIX) or (run_dir / "report.json").exists():
            continue
        try:
            pid = int((run_dir / PID_FILE).read_text())
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            pass  # no pid file (an older or hand-made folder): treat as interrupted
        swept.append(mark_failed(run_dir, "interrupted: the demo process ended before writing report.json"))
    return swept


def run_demo(cfg: DemoConfig, home: Home) -> tuple[dict, Path]:
    """Run the demo; returns ``(report, run_dir)``. See the module docstring.

    Raises:
        DemoFailed: any stage failed (or was interrupted); the run folder is then renamed
            ``<run>.failed`` with ``error.txt``, so no half-made run looks like a complete one.
    """
    cfg = cfg.resolved()
    started = time.time()
    train_df, test_df = load_banking77(cfg.data)  # bad input fails here, before any run folder exists
    pools = build_pools(train_df, test_df, cfg.scarce_intents, cfg.scarce_examples, cfg.seed)
    home.runs_dir.mkdir(parents=True, exist_ok=True)
    for swept in sweep_interrupted_runs(home.runs_dir):
        log.warning("an earlier demo run was interrupted: moved to %s", swept)
    run_dir = home.runs_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    run_home = run_home_of(home, run_dir).ensure()
    (run_dir / PID_FILE).write_text(str(os.getpid()))
    stage = ["writing the training data"]
    try:
        report = _run_stages(cfg, run_dir, run_home, pools, test_df, started, stage)
    except BaseException as exc:
        import traceback

        failed = mark_failed(run_dir, f"stage: {stage[0]}\n\n{traceback.format_exc()}")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise DemoFailed(stage[0], failed, exc) from exc
    (run_dir / PID_FILE).unlink(missing_ok=True)
    return report, run_dir


def _run_stages(cfg: DemoConfig, run_dir: Path, run_home: Home, pools, test_df, started: float,
                stage: list[str]) -> dict:
    """The demo's stages in order; ``stage[0]`` names the one running (for the failure message)."""
    data_dir = write_training_data(pools, run_dir / "data")
    preset = "quick" if cfg.quick else "full"
    stage[0] = "initial training"
    log.info("initial training (%s preset) on %d rows", preset, len(pools.initial_train))
    initial = train(TrainConfig.for_preset(preset, data=str(data_dir), seed=cfg.seed), run_home)
    rng = random.Random(cfg.seed)
    queries_in = make_queries(pools, cfg.in_distribution_requests, 0.0, 0.0, rng)

    def drift_queries() -> Iterator[Query]:
        while True:
            yield from make_queries(pools, 50, cfg.drift_scarce_share, cfg.typo_share, rng)

    env = {"TUNELOOP_POLL_SECONDS": "1", "TUNELOOP_MAX_LATENCY_MS": "60000"}
    stage[0] = "starting the service and the monitor"
    with running_server(run_home, env=env, ready_timeout=180) as server, \
            monitor_process(run_home, cfg, preset) as metrics_url:
        replay = Replayer(server.url, clients=cfg.clients, feedback_share=cfg.feedback_share, seed=cfg.seed)
        try:
            stage[0] = "phase in_distribution"
            replay.run("in_distribution", iter(queries_in), rate=lambda: cfg.rate)
            deadline = time.time() + cfg.timeout_minutes * 60
            state = {"checked": 0.0, "retraining": False}

            def drift_rate() -> float:
                if time.time() - state["checked"] > 1.0:
                    state["checked"], state["retraining"] = time.time(), _retraining(metrics_url)
                return cfg.retrain_rate if state["retraining"] else cfg.rate

            def swapped() -> bool:
                last = replay.outcomes[-cfg.clients * 2:]
                return time.time() > deadline or any(o.ok and initial.tag not in o.model_tags for o in last)

            stage[0] = "phase drift (waiting for detection, retraining and the swap)"
            replay.run("drift", drift_queries(), rate=drift_rate, stop=swapped, max_requests=cfg.max_drift_requests)
            if any(o.ok and initial.tag not in o.model_tags for o in replay.outcomes):
                stage[0] = "phase after_retrain"
                replay.run("after_retrain", drift_queries(), rate=lambda: cfg.rate,
                           max_requests=cfg.after_retrain_requests)
            time.sleep(cfg.monitor_interval * 2)  # let the monitor judge the last window
        finally:
            replay.close()
    promoted, warm_start = promoted_retrain(run_home), None
    if cfg.compare_warm_start and promoted is not None:  # on a quiet machine: traffic and monitor have stopped
        stage[0] = "warm-start comparison"
        warm_start = compare_warm_starts(run_home, promoted, monitor_retrain_config(run_home))
    stage[0] = "writing the report"
    report = build_report(cfg, run_home, pools, initial, test_df, replay.outcomes, started, warm_start=warm_start)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report
