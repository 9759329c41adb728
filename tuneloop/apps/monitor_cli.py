"""``tuneloop monitor``: a thin Typer layer over :class:`tuneloop.monitoring.monitor.Monitor`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import typer

from tuneloop.state.home import DB_URL_ENV, DEFAULT_HOME

EXCLUDE_REVIEWER_HELP = ("Retrain without the feedback of this reviewer (a name of TUNELOOP_REVIEWER_TOKENS, or a Label "
                         "Studio annotator imported by `tuneloop labels import`); repeat for several. Replaces the "
                         "config file's retrain.exclude_reviewers. Feedback without a reviewer is kept.")
DB_URL_HELP = ("Traffic store (predictions, feedback, decisions, monitor state) as a SQLAlchemy URL, e.g. "
               "postgresql+psycopg://user:pass@host/db (default: SQLite at HOME/traffic.db).")


def load_monitor_config(config: Path | None, raw_overrides: dict | None = None):
    """The MonitorConfig from the YAML file ``config`` (or the defaults) with ``raw_overrides`` merged on
    top (nested dicts merge key by key); exits with code 2 and the validation message when invalid."""
    import yaml

    from tuneloop.monitoring.monitor import MonitorConfig

    def merge(base: dict, top: dict) -> dict:
        return {**base, **{k: merge(base.get(k) or {}, v) if isinstance(v, dict) and isinstance(base.get(k) or {}, dict)
                           else v for k, v in top.items()}}

    raw = merge((yaml.safe_load(config.read_text()) or {}) if config else {}, raw_overrides or {})
    try:
        return MonitorConfig(**raw)
    except ValueError as exc:
        typer.secho(f"invalid monitor config:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def check_cron_option(value: str | None) -> str | None:
    """Typer callback of ``--retrain-cron``: the expression, or BadParameter saying what is wrong."""
    from tuneloop.monitoring.cron import cron_trigger

    if value is None:
        return None
    try:
        cron_trigger(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


WarmStartChoice = Literal["champion", "base"]  # RetrainConfig.warm_start (tuneloop.monitoring.warm_start)
WARM_START_HELP = ("Where a challenger's training starts: champion (its weights, at a smaller learning rate: "
                   "incremental training) or base (the base model, as the champion's first run). Default: the "
                   "config's retrain.warm_start.")


def monitor(
    home: Path = typer.Option(DEFAULT_HOME, "--home", envvar="TUNELOOP_HOME", help="Run-state folder."),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="YAML of MonitorConfig fields (drift, policy, retrain, ...)."),
    interval: float | None = typer.Option(None, "--interval", help="Seconds between checks (default: 30)."),
    min_window: int | None = typer.Option(None, "--min-window",
                                             help="Skip (and keep accumulating) windows smaller than this (default: 50)."),
    confirm_windows: int | None = typer.Option(None, help="Consecutive alarming windows before 'degraded' (default: 2)."),
    min_new_labels: int | None = typer.Option(None, help="New feedback labels needed to retrain (default: 50)."),
    min_gain: float | None = typer.Option(None, help="Gate: macro-F1 gain the challenger needs (default: 0.01)."),
    metrics_port: int | None = typer.Option(None, help="Port of the monitor's /metrics on 127.0.0.1 (default: 9108); 0: off."),
    once: bool = typer.Option(False, "--once", help="Run one check and exit (for cron or a test)."),
    no_retrain: bool = typer.Option(False, "--no-retrain", help="Observe and decide only: where the policy says "
                                    "retrain, record the decision `retrain_due` (audited; counted as "
                                    "tuneloop_monitor_retrains_total{outcome=\"deferred\"}) and train nothing; "
                                    "`tuneloop retrain`, run by an external scheduler, serves it. For more than one "
                                    "monitor, or retraining on other machines."),
    retrain_cron: str | None = typer.Option(
        None, "--retrain-cron", callback=check_cron_option, metavar="CRON",
        help="Also retrain on this schedule, drift or not: a crontab expression 'minute hour day-of-month month "
             "day-of-week' in UTC (e.g. '0 3 * * 0': Sundays at 03:00; day of week 0 and 7 are Sunday). A firing "
             "trains only when feedback came in since the last retrain (else it audits retrain_skipped), through "
             "the same lock and gate as a drift retrain; with --no-retrain it records retrain_due."),
    warm_start: WarmStartChoice | None = typer.Option(None, "--warm-start", help=WARM_START_HELP),
    exclude_reviewer: list[str] | None = typer.Option(None, "--exclude-reviewer", metavar="NAME",
                                                      help=EXCLUDE_REVIEWER_HELP),
    db_url: str | None = typer.Option(None, "--db-url", envvar=DB_URL_ENV, help=DB_URL_HELP),
    verbose: bool = typer.Option(True, "--verbose/--quiet", help="Log each decision."),
) -> None:
    """Watch the traffic of HOME: drift report every --interval seconds; retrain, gate and promote
    when the policy says the model has degraded and enough labels came in.

    Every decision goes to the `decisions` table of the traffic store (HOME/traffic.db, or --db-url) with
    its signals and reason; reports go to HOME/reports (HTML + JSON) and the Evidently workspace
    HOME/evidently. With --no-retrain it only records that a retrain is due (`tuneloop retrain` does it).
    """
    from tuneloop.monitoring.monitor import Monitor, run_scheduler
    from tuneloop.state.home import Home
    from tuneloop.state.registry import read_champion

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "httpx", "alembic"):  # per-run chatter; our own log says what each cycle decided
        logging.getLogger(noisy).setLevel(logging.ERROR)
    raw: dict = {}
    if interval is not None:
        raw["interval_seconds"] = interval
    if metrics_port is not None:
        raw["metrics_port"] = metrics_port or None
    for key, value in (("min_window", min_window), ("confirm_windows", confirm_windows),
                       ("min_new_labels", min_new_labels)):
        if value is not None:
            raw.setdefault("policy", {})[key] = value
    if min_gain is not None:
        raw["retrain"] = {"gate": {"min_gain": min_gain}}
    if warm_start is not None:
        raw.setdefault("retrain", {})["warm_start"] = warm_start
    if retrain_cron is not None:
        raw["retrain_cron"] = retrain_cron
    if exclude_reviewer:
        raw.setdefault("retrain", {})["exclude_reviewers"] = list(exclude_reviewer)
    cfg = load_monitor_config(config, raw)
    home_obj = Home(home, db_url=db_url)
    if read_champion(home_obj) is None:
        typer.secho(f"error: no champion model in {home_obj.root}; run `tuneloop train --home {home_obj.root}` first",
                    fg="red", err=True)
        raise typer.Exit(1)
    mon = Monitor(home_obj, cfg, defer_retrain=no_retrain)
    if once:
        result = mon.cycle()
        typer.echo(f"{result.action}: {result.reason}")
        return
    typer.echo(f"warmed up on the champion's reference sample in {mon.warm_up():.1f} s")
    if cfg.metrics_port:  # served once warm: whoever waits for /metrics gets a monitor ready to judge
        mon.metrics.serve(cfg.metrics_port)
        typer.echo(f"monitor metrics on http://127.0.0.1:{cfg.metrics_port}/metrics")
    typer.echo(f"monitoring {home_obj.root} every {cfg.interval_seconds:g} s (Ctrl-C to stop)")
    if cfg.retrain_cron:
        from datetime import UTC, datetime

        from tuneloop.monitoring.cron import next_fire

        typer.echo(f"retraining on cron '{cfg.retrain_cron}' (UTC) too, next at "
                   f"{next_fire(cfg.retrain_cron, datetime.now(UTC)):%Y-%m-%d %H:%M} UTC")
    run_scheduler(mon, cfg.interval_seconds)
    typer.echo("monitor stopped")
    logging.shutdown()
    os._exit(0)  # do not wait for an abandoned retrain thread (see run_scheduler)
