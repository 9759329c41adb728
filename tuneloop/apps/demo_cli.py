"""``tuneloop demo``: a thin Typer layer over :func:`tuneloop.apps.demo.run_demo`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from tuneloop.state.home import DB_URL_ENV, DB_URL_HELP, DEFAULT_HOME


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(report: dict, run_dir: Path) -> None:
    """Print the demo's summary tables (rich) to stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    init = report["initial_model"]
    console.print(f"[bold]initial model[/] {init['tag']}: test accuracy {init['test_accuracy']:.4f} "
                  f"(well-covered intents, {init['test_rows']} rows), macro F1 {init['test_macro_f1']:.4f}; "
                  f"whole test split {init['test_accuracy_all']:.4f} ({init['test_rows_all']} rows)")
    table = Table(title="phases")
    for col in ("phase", "requests", "failed", "live accuracy", "drift alarms", "windows", "feedback"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for p in report["phases"]:
        table.add_row(p["name"], str(p["requests"]), str(p["failed_requests"]), _fmt(p["live_accuracy"]),
                      str(p["drift_alarms"]), str(p["windows_judged"]), str(p["feedback_sent"]))
    console.print(table)
    r = report["retrain"]
    console.print(f"drift onset at request {_fmt(report['drift_onset_request'])}, detected at "
                  f"{_fmt(report['drift_detected_at_request'])} (delay {_fmt(report['detection_delay_requests'])})")
    console.print(f"retrain: triggered={r['triggered']} promoted={r['promoted']} challenger {_fmt(r['challenger_tag'])} "
                  f"holdout accuracy {_fmt(r['challenger_accuracy'])} vs champion {_fmt(r['champion_accuracy'])} "
                  f"({_fmt(r['seconds'])} s); swap failed requests {report['swap']['failed_requests']}")
    print_watch_and_warm_start(console, report)
    checks = Table(title="checks")
    checks.add_column("criterion")
    checks.add_column("ok")
    for name, ok in report["checks"].items():
        checks.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(checks)
    console.print(f"wall {report['wall_seconds']:.0f} s; report: {run_dir / 'report.json'}")


def print_watch_and_warm_start(console, report: dict) -> None:
    """The post-swap watch's verdict and the warm-start comparison (when the report has them)."""
    watch = report.get("watch") or {}
    if watch:
        console.print(f"post-swap watch: {watch['verdict']}" + (f" ({watch['reason']})" if watch.get("reason") else
                                                               f" ({watch.get('requests', 0)} requests answered)"))
    ws = report.get("warm_start")
    if ws:
        sides = [f"{k} {_fmt(ws[k]['value'])} in {ws[k]['seconds']:.0f} s (training {ws[k]['train_seconds'] or 0:.0f} s"
                 f"{', under traffic' if ws[k]['under_traffic'] else ''})" for k in ("champion", "base")]
        console.print(f"warm start, holdout {ws['champion']['metric']} (same feedback): {'; '.join(sides)}; "
                      f"default {ws['default']}")


def print_gen_summary(report: dict, run_dir: Path) -> None:
    """Print the generation demo's summary tables (rich) to stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    init = report["initial_model"]
    console.print(f"[bold]initial model[/] {init['tag']}: holdout perplexity {_fmt(init.get('test_perplexity'))}, "
                  f"ROUGE-L {_fmt(init.get('test_rougeL'))}, stop rate {_fmt(init.get('test_stop_rate'))} "
                  f"({init['train_seconds']} s of training)")
    table = Table(title="phases")
    for col in ("phase", "requests", "failed", "live ROUGE-L", "stop rate", "drift alarms", "windows", "feedback"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for p in report["phases"]:
        table.add_row(p["name"], str(p["requests"]), str(p["failed_requests"]), _fmt(p["live_rouge_l"]),
                      _fmt(p["stop_rate"]), str(p["drift_alarms"]), str(p["windows_judged"]), str(p["feedback_sent"]))
    console.print(table)
    r = report["retrain"]
    console.print(f"drift onset at request {_fmt(report['drift_onset_request'])}, detected at "
                  f"{_fmt(report['drift_detected_at_request'])} (delay {_fmt(report['detection_delay_requests'])})")
    console.print(f"retrain: triggered={r['triggered']} promoted={r['promoted']} challenger {_fmt(r['challenger_tag'])} "
                  f"({_fmt(r['seconds'])} s): {r.get('gate_reason') or '-'}; swap failed requests "
                  f"{report['swap']['failed_requests']}")
    checks = Table(title="checks")
    checks.add_column("criterion")
    checks.add_column("ok")
    for name, ok in report["checks"].items():
        checks.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(checks)
    console.print(f"wall {report['wall_seconds']:.0f} s; report: {run_dir / 'report.json'}")


def demo(
    data: str = typer.Option(..., "--data", help="classification: Banking77 folder with train.csv and test.csv "
                             "(text, category), e.g. ../shared/data/banking77, or hf:PolyAI/banking77 (needs the "
                             "network). generation: the Bitext folder, ../shared/data/bitext-customer-support."),
    task: str = typer.Option("classification", "--task", help="classification (Banking77 intents) or generation "
                             "(Bitext request -> reply with SmolLM2-135M-Instruct; two categories scarce, the drift "
                             "phase mostly from them, reviewers' replies as feedback)."),
    quick: bool = typer.Option(False, "--quick", help="Quick preset: smaller phases, quick training (minutes on CPU)."),
    scarce_intents: int = typer.Option(10, help="Intents that keep only --scarce-examples training rows."),
    scarce_examples: int = typer.Option(5, help="Training rows kept per scarce intent."),
    feedback_share: float = typer.Option(0.3, help="Share of requests that reviewers label (classification) or "
                                         "correct with the data set's reply (generation) through /feedback."),
    seed: int = typer.Option(0, help="Seed of intents, pools, queries, typos and feedback."),
    home: Path = typer.Option(DEFAULT_HOME, "--home", envvar="TUNELOOP_HOME",
                              help="Run-state folder; the demo runs in <home>/runs/demo-<time>/."),
    db_url: str | None = typer.Option(None, "--db-url", envvar=DB_URL_ENV, show_default=False,
                                      help=DB_URL_HELP + " With a database the run needs it empty."),
    verbose: bool = typer.Option(False, "--verbose", help="Log progress of every stage."),
) -> None:
    """Run the whole loop on Banking77: train, serve, replay traffic, drift, retrain, gate, hot-swap.

    Writes report.json in the run folder and prints a summary. Exits 0 when every check passes
    (initial accuracy, no false alarm, detection delay, promotion, accuracy gain, zero failed
    requests), 1 otherwise, 2 on bad input.
    """
    from pydantic import ValidationError

    from tuneloop.apps.demo import DemoConfig, DemoFailed, run_demo
    from tuneloop.state.home import Home
    from tuneloop.training.data import DataError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per replayed request otherwise
    if task not in ("classification", "generation"):
        typer.secho(f"error: unknown task {task!r}: use classification or generation", fg="red", err=True)
        raise typer.Exit(2)
    if task == "generation":  # the generation demo has its own data, traffic and report (tuneloop.apps.gen_demo)
        from tuneloop.apps.gen_demo import GenDemoConfig, run_gen_demo

        try:
            report, run_dir = run_gen_demo(GenDemoConfig(data=data, quick=quick, feedback_share=feedback_share,
                                                         seed=seed), Home(home, db_url=db_url or None))
        except (ValidationError, DataError, ValueError, KeyError) as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        except DemoFailed as exc:
            typer.secho(f"error: {exc}\n(the traceback is in {exc.run_dir / 'error.txt'})", fg="red", err=True)
            raise typer.Exit(1) from exc
        print_gen_summary(report, run_dir)
        if not all(report["checks"].values()):
            raise typer.Exit(1)
        return
    try:
        cfg = DemoConfig(data=data, quick=quick, scarce_intents=scarce_intents, scarce_examples=scarce_examples,
                         feedback_share=feedback_share, seed=seed)
        report, run_dir = run_demo(cfg, Home(home, db_url=db_url or None))
    except (ValidationError, DataError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except DemoFailed as exc:
        typer.secho(f"error: {exc}\n(the traceback is in {exc.run_dir / 'error.txt'}; the service and monitor "
                    f"logs in {exc.run_dir / 'logs'})", fg="red", err=True)
        raise typer.Exit(1) from exc
    print_summary(report, run_dir)
    if not all(report["checks"].values()):
        raise typer.Exit(1)
