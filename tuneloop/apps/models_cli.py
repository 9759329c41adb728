"""``tuneloop models``: list, show, diff, promote and roll back the model versions of a home.

A thin Typer layer: the rows and dicts come from :mod:`tuneloop.apps.models_view`, the promotion and
rollback from :mod:`tuneloop.apps.models_actions`; this module only parses options, renders rich
tables (or, with ``--json``, one JSON document) and maps errors to exit codes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import typer

from tuneloop.state.home import DB_URL_ENV, DB_URL_HELP, DEFAULT_HOME, HOME_ENV

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2  # documented in each command's help
# BentoML's tag grammar (name[:version], lowercase letters, digits, '-', '_', '.'), bounded in length
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}(:[a-z0-9][a-z0-9._-]{0,127})?")
CARD_LINES = 40  # card lines `models show` prints on a terminal (--card prints all; --json holds all)
OFF_TERMINAL_WIDTH = 200  # table width when piped without $COLUMNS: rich's 80 would cut tags short

models_app = typer.Typer(
    name="models", no_args_is_help=True, pretty_exceptions_enable=False,
    help="The model registry: list, show, diff, promote and roll back model versions.\n\n"
         "Every trained version of a home, its metrics and lineage, the champion pointer. Promote a version (through the gate unless --force) or roll back to the previous champion; "
         "every move is audited in the event log (actor `cli`). Exit codes: 0 ok, 1 refused (the gate kept the "
         "champion, or the tag is blocked), 2 bad input (unknown tag, nothing to roll back).",
)

HOME_OPTION = typer.Option(DEFAULT_HOME, "--home", envvar=HOME_ENV, help="Run-state folder (model store, champion pointer).")
DB_URL_OPTION = typer.Option(None, "--db-url", envvar=DB_URL_ENV, help=DB_URL_HELP)
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document (for scripts) instead of tables.")


def _tag(value: str | None) -> str | None:
    """Typer callback: a tag in BentoML's grammar (``name`` or ``name:version``), else BadParameter."""
    if value is not None and not TAG_PATTERN.fullmatch(value):
        raise typer.BadParameter(f"{value[:80]!r} is not a model tag (name:version, as `tuneloop models list` prints)")
    return value


def _home(home: Path, db_url: str | None):
    """The Home at ``home``; exits 2 when there is no such folder (a typo must not create one)."""
    from tuneloop.state.home import Home

    if not Path(home).is_dir():
        raise _fail(f"no tuneloop home at {Path(home).resolve()} (--home or $TUNELOOP_HOME)", EXIT_BAD_INPUT)
    return Home(home, db_url=db_url)


def _console():
    """A rich Console: the terminal's width, ``$COLUMNS``, or :data:`OFF_TERMINAL_WIDTH` when piped."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=OFF_TERMINAL_WIDTH)
    return console


def _print_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=1, default=str))


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def _fmt(value):
    """A table cell: ``-`` for None, 4 decimals for a float; plain text (``rich.text.Text``), never read as
    markup, so a reason like ``[/x]`` prints as typed."""
    from rich.text import Text

    if value is None:
        return Text("-")
    return Text(f"{value:.4f}" if isinstance(value, float) else str(value))


@models_app.command("list")
def list_cmd(home: Path = HOME_OPTION, db_url: str | None = DB_URL_OPTION, as_json: bool = JSON_OPTION) -> None:
    """List every model version, oldest first.

    Columns: tag, task, created (UTC), base model, primary metric on its test split, the gate's verdict
    (`-`: no gate judged it, e.g. the first model), and markers: * champion, ^ previous champion (where
    `models rollback` goes), x blocked (rolled back; `models promote --force` lifts it)."""
    from rich import box
    from rich.table import Table

    from tuneloop.apps.models_view import model_rows

    doc = model_rows(_home(home, db_url))
    if as_json:
        _print_json(doc)
        return
    if not doc["models"]:
        typer.echo(f"no models in {Path(home).resolve()}: `tuneloop train --home {home}` makes the first")
        return
    table = Table(title="models (* champion, ^ previous champion, x blocked)", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("")
    table.add_column("tag", no_wrap=True, min_width=max(len(r["tag"]) for r in doc["models"]))
    table.add_column("task", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    for col in ("base model", "metric", "value", "gate"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in doc["models"]:
        mark = ("*" if row["champion"] else "^" if row["previous"] else "") + ("x" if row["blocked"] else "")
        table.add_row(mark, _fmt(row["tag"]), _fmt(row["task"]), row["created"][:16].replace("T", " "),
                      _fmt(row["base_model"]), _fmt(row["metric"]["name"]), _fmt(row["metric"]["value"]), row["gate"])
    _console().print(table)


@models_app.command("show")
def show_cmd(
    tag: str | None = typer.Argument(None, callback=_tag, help="The model (default: the champion)."),
    home: Path = HOME_OPTION, db_url: str | None = DB_URL_OPTION, as_json: bool = JSON_OPTION,
    card: bool = typer.Option(False, "--card", help=f"Print the whole model card (default: its first {CARD_LINES} lines)."),
) -> None:
    """Show one model: metadata, evaluation, model card, lineage.

    The lineage chain is the model, its
    parent, the parent's parent, ...: what triggered each retrain, the feedback it trained on, the data
    hash, the gate's verdict, promotions and rollbacks). Exit 2: unknown tag, or no champion."""
    from rich.markdown import Markdown
    from rich.table import Table

    from tuneloop.apps.models_view import describe_link, flat_metrics, model_detail
    from tuneloop.state.registry import ModelNotFoundError

    try:
        doc = model_detail(_home(home, db_url), tag)
    except ModelNotFoundError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from exc
    if as_json:
        _print_json(doc)
        return
    console, row, meta = _console(), doc["row"], doc["metadata"]
    marks = [m for m, on in (("champion", row["champion"]), ("previous champion", row["previous"]),
                             ("BLOCKED", row["blocked"])) if on]
    console.print(f"{doc['tag']} {' '.join(f'({m})' for m in marks)}", markup=False, highlight=False)
    facts = Table(show_header=False, box=None)
    for key, value in (("task", row["task"]), ("created", row["created"]), ("base model", row["base_model"]),
                       ("path", doc["path"]), ("data sha256", meta.get("data_sha256")),
                       ("train rows", meta.get("train_rows")), ("parent", meta.get("parent")), ("gate", row["gate"])):
        facts.add_row(key, _fmt(value))
    console.print(facts)
    metrics = Table(title="evaluation")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in flat_metrics(doc["metrics"]).items():
        metrics.add_row(_fmt(key), _fmt(value))
    console.print(metrics)
    console.print("[bold]lineage[/bold] (the model, then its parent, ...)", highlight=False)
    for depth, link in enumerate(doc["lineage"]):
        block = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
        block.add_column(no_wrap=True)
        block.add_column()
        for field, text in describe_link(link):
            block.add_row(field, _fmt(text))
        console.print(("" if depth == 0 else "parent: ") + link["tag"], markup=False, highlight=False)
        console.print(block)
    if doc["card"]:
        lines = doc["card"].splitlines()
        console.print(Markdown("\n".join(lines if card else lines[:CARD_LINES])))
        if not card and len(lines) > CARD_LINES:
            console.print(f"... ({len(lines) - CARD_LINES} more lines: --card)")


@models_app.command("diff")
def diff_cmd(
    tag_a: str = typer.Argument(..., callback=_tag, help="The first model (column a)."),
    tag_b: str = typer.Argument(..., callback=_tag, help="The second model (column b)."),
    home: Path = HOME_OPTION, db_url: str | None = DB_URL_OPTION, as_json: bool = JSON_OPTION,
) -> None:
    """Compare two models' metrics side by side.

    Stored metrics with the difference (b - a), and the facts that differ
    (task, base model, data hash, training rows, parent). Exit 2: unknown tag."""
    from rich.table import Table

    from tuneloop.apps.models_view import model_diff
    from tuneloop.state.registry import ModelNotFoundError

    try:
        doc = model_diff(_home(home, db_url), tag_a, tag_b)
    except ModelNotFoundError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from exc
    if as_json:
        _print_json(doc)
        return
    table = Table(title="metrics")
    for col in ("metric", "a", "b", "b - a"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in doc["metrics"]:
        diff = row["diff"]
        table.add_row(_fmt(row["metric"]), _fmt(row["a"]), _fmt(row["b"]),
                      "-" if diff is None else f"{diff:+d}" if isinstance(diff, int) else f"{diff:+.4f}")
    console = _console()
    console.print(f"a = {doc['a']}\nb = {doc['b']}", markup=False, highlight=False)
    console.print(table)
    differing = [f for f in doc["facts"] if f["a"] != f["b"]]
    if differing:
        facts = Table(title="facts that differ")
        for col in ("field", "a", "b"):
            facts.add_column(col)
        for fact in differing:
            facts.add_row(fact["field"], _fmt(fact["a"]), _fmt(fact["b"]))
        console.print(facts)


@models_app.command("promote")
def promote_cmd(
    tag: str = typer.Argument(..., callback=_tag, help="The model to make the champion."),
    reason: str = typer.Option(..., "--reason", help="Why (goes into the audit trail; at most 500 characters)."),
    force: bool = typer.Option(False, "--force", help="Skip the gate, and promote a blocked tag (recording `unblocked`)."),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                       help="The monitor's YAML (MonitorConfig): its `retrain` section says how the "
                                            "gate judges (gate margins) and reads the champion's data (preset)."),
    min_gain: float | None = typer.Option(None, "--min-gain", help="Gate: primary-metric gain TAG needs over the "
                                          "champion (default 0.01; negative tolerates a loss)."),
    home: Path = HOME_OPTION, db_url: str | None = DB_URL_OPTION, as_json: bool = JSON_OPTION,
) -> None:
    """Make TAG the champion, through the gate unless --force.

    Unless --force, the gate first scores the champion and TAG on the champion's
    holdout (the test split of its data) and promotes only when TAG wins by the gate's margins, as the
    loop's retrains do; its verdict is recorded (`gated`). A blocked tag (rolled back earlier) is refused
    unless --force. Audited as `promoted`, actor `cli`. Running services pick the new champion up on their
    next poll.

    Exit codes: 0 promoted; 1 refused (the gate kept the champion, or TAG is blocked); 2 bad input
    (unknown tag, TAG is the champion already, models of different tasks, the champion's data unreadable:
    --force skips the gate)."""
    from tuneloop.apps.models_actions import PromotionRefused, promote_model
    from tuneloop.apps.monitor_cli import load_monitor_config
    from tuneloop.state.registry import ModelNotFoundError

    cfg = load_monitor_config(config, {"retrain": {"gate": {"min_gain": min_gain}}} if min_gain is not None else None)
    try:
        outcome = promote_model(_home(home, db_url), tag, reason, cfg.retrain, force=force)
    except PromotionRefused as refused:
        if as_json:
            _print_json(refused.outcome.to_dict())
        raise _fail(refused.outcome.message, EXIT_REFUSED) from refused
    except (ModelNotFoundError, ValueError) as exc:  # a DataError (unreadable data) is a ValueError
        raise _fail(str(exc), EXIT_BAD_INPUT) from exc
    if as_json:
        _print_json(outcome.to_dict())
    else:
        typer.echo(outcome.message)
        if outcome.gate:
            typer.echo(f"gate: {outcome.gate['reason']}")


@models_app.command("rollback")
def rollback_cmd(
    reason: str = typer.Option(..., "--reason", help="Why (goes into the audit trail; at most 500 characters)."),
    no_block: bool = typer.Option(False, "--no-block", help="Do not block the reverted model (by default it may "
                                  "not be promoted again without `models promote --force`)."),
    home: Path = HOME_OPTION, db_url: str | None = DB_URL_OPTION, as_json: bool = JSON_OPTION,
) -> None:
    """Roll the champion back to the previous one.

    The previous champion is the newest earlier champion that is not blocked. Audited as
    `rolled_back` (and `blocked`, unless --no-block), actor `cli`.

    Exit codes: 0 rolled back; 2 bad input (no champion, nothing earlier to roll back to, no reason)."""
    from tuneloop.apps.models_actions import rollback_model
    from tuneloop.state.registry import ModelNotFoundError

    try:
        outcome = rollback_model(_home(home, db_url), reason, block=not no_block)
    except (ModelNotFoundError, ValueError) as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from exc
    if as_json:
        _print_json(outcome.to_dict())
    else:
        typer.echo(f"rolled back {outcome.reverted} -> {outcome.champion}"
                   + (f"; {outcome.reverted} is blocked (models promote --force lifts it)" if outcome.blocked else ""))
