"""``tuneloop retrain``: a thin Typer layer over :func:`tuneloop.monitoring.retrain_job.run_job`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from tuneloop.apps.monitor_cli import (
    DB_URL_HELP,
    EXCLUDE_REVIEWER_HELP,
    WARM_START_HELP,
    WarmStartChoice,
    load_monitor_config,
)
from tuneloop.apps.train_cli import NPROC_HELP
from tuneloop.state.home import DB_URL_ENV, DEFAULT_HOME


def retrain(
    home: Path = typer.Option(DEFAULT_HOME, "--home", envvar="TUNELOOP_HOME", help="Run-state folder (model store, "
                              "champion pointer)."),
    db_url: str | None = typer.Option(None, "--db-url", envvar=DB_URL_ENV, help=DB_URL_HELP),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                       help="The monitor's YAML (MonitorConfig); its `retrain` section says how "
                                            "to retrain and gate (preset, overrides, gate margins)."),
    force: bool = typer.Option(False, "--force", help="Retrain even when no retrain is due."),
    nproc: int = typer.Option(1, "--nproc", min=1, help=NPROC_HELP),
    warm_start: WarmStartChoice | None = typer.Option(None, "--warm-start", help=WARM_START_HELP),
    exclude_reviewer: list[str] | None = typer.Option(None, "--exclude-reviewer", metavar="NAME",
                                                      help=EXCLUDE_REVIEWER_HELP),
    verbose: bool = typer.Option(True, "--verbose/--quiet", help="Log progress."),
    job: str | None = typer.Option(None, "--job", hidden=True,
                                   help="Internal: the run a torchrun worker belongs to (JSON)."),
) -> None:
    """Run one retrain -> gate -> promote and exit, when a retrain is due: for an external scheduler
    (Kubernetes CronJob with concurrencyPolicy Forbid, cron) beside monitors started with --no-retrain.

    Due means: a monitor recorded `retrain_due` after the decision the last completed run served.
    Otherwise the run says so and exits 0, so it can run as often as you like. Two runs never
    overlap: each takes the store's retrain lock first (PostgreSQL advisory lock on --db-url, a file
    lock beside SQLite's HOME/traffic.db). Every run is audited in the decisions table
    (retrain_promoted, retrain_rejected, retrain_failed, retrain_skipped, retrain_locked).

    Exit codes: 0 done (promoted or rejected) or nothing due; 1 the retrain failed (the decision stays
    due: the next run retries) or HOME has no champion; 2 invalid options or config (or --nproc above
    the number of GPUs); 3 another run (or a monitor retraining in-process) holds the store's retrain lock.
    """
    from tuneloop.monitoring.retrain_job import run_job, serve_job
    from tuneloop.state.home import Home
    from tuneloop.state.registry import read_champion

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.ERROR)
    retrain_raw = {**({"warm_start": warm_start} if warm_start else {}),
                   **({"exclude_reviewers": list(exclude_reviewer)} if exclude_reviewer else {})}
    cfg = load_monitor_config(config, {"retrain": retrain_raw} if retrain_raw else None)
    home_obj = Home(home, db_url=db_url)
    if read_champion(home_obj) is None:
        typer.secho(f"error: no champion model in {home_obj.root}; run `tuneloop train --home {home_obj.root}` first",
                    fg="red", err=True)
        raise typer.Exit(1)
    if nproc > 1 and job is None:
        from tuneloop.training.distributed import check_devices

        try:
            check_devices(nproc)
        except ValueError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
    if job is not None:  # a torchrun worker of a run that holds the lock (ranks > 0 exit during training)
        result = serve_job(home_obj, cfg, json.loads(job))
    else:
        result = run_job(home_obj, cfg, force=force, nproc=nproc,
                         launch=lambda run: launch_workers(home_obj, config, verbose, run, nproc, warm_start,
                                                           exclude_reviewer))
    typer.echo(f"{result.action}: {result.reason}")
    raise typer.Exit(result.exit_code)


def launch_workers(home, config: Path | None, verbose: bool, run: dict, nproc: int, warm_start: str | None = None,
                   exclude_reviewers: list[str] | None = None) -> int:
    """Run ``tuneloop retrain --job <run>`` in ``nproc`` torchrun processes (the store URL through
    ``$TUNELOOP_DB_URL``, not the command line); returns torchrun's exit code."""
    from tuneloop.training.distributed import relaunch

    args = ["retrain", "--home", str(home.root), "--job", json.dumps(run), "--verbose" if verbose else "--quiet"]
    if config is not None:
        args += ["--config", str(Path(config).resolve())]
    if warm_start is not None:
        args += ["--warm-start", warm_start]
    for name in exclude_reviewers or ():
        args += ["--exclude-reviewer", name]
    return relaunch(args, nproc, env={DB_URL_ENV: home.db_url} if home.db_url else None)

