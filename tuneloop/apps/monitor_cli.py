"""``tuneloop monitor``: a thin Typer layer over :class:`tuneloop.monitoring.monitor.Monitor`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from tuneloop.state.home import DEFAULT_HOME


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
    verbose: bool = typer.Option(True, "--verbose/--quiet", help="Log each decision."),
) -> None:
    """Watch the traffic of HOME: drift report every --interval seconds; retrain, gate and promote
    when the policy says the model has degraded and enough labels came in.

    Every decision goes to the `decisions` table of HOME/traffic.db with its signals and reason;
    reports go to HOME/reports (HTML + JSON) and the Evidently workspace HOME/evidently.
    """
    import yaml

    from tuneloop.monitoring.monitor import Monitor, MonitorConfig, run_scheduler
    from tuneloop.state.home import Home
    from tuneloop.state.registry import read_champion

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "httpx", "alembic"):  # per-run chatter; our own log says what each cycle decided
        logging.getLogger(noisy).setLevel(logging.ERROR)
    raw = (yaml.safe_load(config.read_text()) or {}) if config else {}
    if interval is not None:
        raw["interval_seconds"] = interval
    if metrics_port is not None:
        raw["metrics_port"] = metrics_port or None
    for key, value in (("min_window", min_window), ("confirm_windows", confirm_windows),
                       ("min_new_labels", min_new_labels)):
        if value is not None:
            raw.setdefault("policy", {})[key] = value
    if min_gain is not None:
        raw.setdefault("retrain", {}).setdefault("gate", {})["min_gain"] = min_gain
    try:
        cfg = MonitorConfig(**raw)
    except ValueError as exc:
        typer.secho(f"invalid monitor config:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    home_obj = Home(home)
    if read_champion(home_obj) is None:
        typer.secho(f"error: no champion model in {home_obj.root}; run `tuneloop train --home {home_obj.root}` first",
                    fg="red", err=True)
        raise typer.Exit(1)
    mon = Monitor(home_obj, cfg)
    if once:
        result = mon.cycle()
        typer.echo(f"{result.action}: {result.reason}")
        return
    typer.echo(f"warmed up on the champion's reference sample in {mon.warm_up():.1f} s")
    if cfg.metrics_port:  # served once warm: whoever waits for /metrics gets a monitor ready to judge
        mon.metrics.serve(cfg.metrics_port)
        typer.echo(f"monitor metrics on http://127.0.0.1:{cfg.metrics_port}/metrics")
    typer.echo(f"monitoring {home_obj.root} every {cfg.interval_seconds:g} s (Ctrl-C to stop)")
    run_scheduler(mon, cfg.interval_seconds)
    typer.echo("monitor stopped")
    logging.shutdown()
    os._exit(0)  # do not wait for an abandoned retrain thread (see run_scheduler)
