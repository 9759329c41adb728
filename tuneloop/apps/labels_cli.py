"""``tuneloop labels``: label the queue in Label Studio. ``export`` writes the label queue as Label Studio
tasks (with the model's answer as a pre-annotation) and the matching labeling config; ``import`` reads
Label Studio's JSON export back as reviewer feedback. The conversions are
:mod:`tuneloop.monitoring.label_studio`'s; this module reads and writes the files and the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.state.home import DB_URL_ENV, DB_URL_HELP, DEFAULT_HOME, HOME_ENV

MAX_IMPORT_BYTES = 64 * 1024 * 1024  # a Label Studio export larger than this is refused unread
EXIT_OK, EXIT_BAD_INPUT = 0, 2

labels_app = typer.Typer(
    name="labels", no_args_is_help=True, pretty_exceptions_enable=False,
    help="Label the requests of the label queue (HOME/label_queue.json, written by `tuneloop monitor`) in "
         "Label Studio: `export` writes them as Label Studio tasks with the model's answer pre-annotated, "
         "`import` reads Label Studio's JSON export back as reviewer feedback.",
)
HOME_OPTION = typer.Option(DEFAULT_HOME, "--home", envvar=HOME_ENV, help="Run-state folder (label queue, models).")
DB_URL_OPTION = typer.Option(None, "--db-url", envvar=DB_URL_ENV, help=DB_URL_HELP)


def _home(home: Path, db_url: str | None):
    """The Home at ``home``; BadParameter when the folder does not exist (a typo must not create one)."""
    from tuneloop.state.home import Home

    if not Path(home).is_dir():
        raise typer.BadParameter(f"no tuneloop home at {Path(home).resolve()} (--home or $TUNELOOP_HOME)",
                                 param_hint="--home")
    return Home(home, db_url=db_url)


def _model_task(home, tag: str | None) -> tuple[str, str, list[str]]:
    """(tag, task name, labels) of model ``tag`` (None or not stored: the champion's)."""
    from tuneloop.state.registry import ModelNotFoundError, get_model, read_champion
    from tuneloop.training.task import task_of

    champion = read_champion(home)
    for candidate in (tag, champion.tag if champion else None):
        if candidate is None:
            continue
        try:
            meta = dict(get_model(home, candidate).info.metadata)
        except ModelNotFoundError:
            continue
        return candidate, task_of(meta).name, [str(label) for label in meta.get("labels") or []]
    raise typer.BadParameter(f"{home.root} has no champion model: train one first", param_hint="--home")


@labels_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Label Studio tasks JSON to write (import it in "
                             "the project: Import -> Upload Files)."),
    config_out: Path | None = typer.Option(None, "--config-out", dir_okay=False, help="Also write the labeling "
                                           "config XML for these tasks (Settings -> Labeling Interface -> Code)."),
    home: Path = HOME_OPTION,
) -> None:
    """Write the label queue as Label Studio tasks: data {text, request_id, model_tag, confidence,
    queue_score[, reply]} and the model's answer as a prediction (model_version = its tag, score = its
    confidence). Classification: a Choices control `label` with every model label; generation: a
    TextArea `reply` pre-filled with the model's reply (edit it to correct it) and a Choices `rating`
    (good/bad). Exit codes: 0 written (also for an empty queue), 2 bad input."""
    from tuneloop.monitoring.label_queue import QUEUE_FILE, read_queue
    from tuneloop.monitoring.label_studio import export_tasks, labeling_config

    home_obj = _home(home, None)
    queue = read_queue(home_obj.root / QUEUE_FILE)
    tag, task, labels = _model_task(home_obj, queue.get("champion"))
    tasks = export_tasks(queue.get("items") or [], task, tag, labels)
    out.write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    if config_out is not None:
        config_out.write_text(labeling_config(task, labels))
    typer.echo(f"wrote {len(tasks)} {task} task(s) of {tag} to {out}"
               + (f" and the labeling config to {config_out}" if config_out else "")
               + ("" if tasks else f" (the label queue {home_obj.root / QUEUE_FILE} is empty)"))


@labels_app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Label Studio's JSON export of the project "
                                "(Export -> JSON)."),
    reviewer: str | None = typer.Option(None, "--reviewer", help="Record every row under this reviewer name "
                                        "(default: each annotation's annotator: completed_by's e-mail, or "
                                        "labelstudio:<user id>)."),
    home: Path = HOME_OPTION,
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Read Label Studio's JSON export back as reviewer feedback, as POST /feedback stores it (the newest
    non-cancelled annotation of each task; a second feedback for a request replaces the first and is
    audited). Skipped, and counted in the summary: cancelled annotations, tasks without annotations or
    request_id, unknown request ids, labels the champion does not have, empty annotations. Exit codes:
    0 imported (even when rows were skipped), 2 bad input."""
    from tuneloop.monitoring.label_studio import MAX_REVIEWER_CHARS, LabelStudioFormatError, read_export
    from tuneloop.state.traffic_store import TrafficLog, UnknownRequestError

    if reviewer is not None and not (0 < len(reviewer.strip()) <= MAX_REVIEWER_CHARS):
        raise typer.BadParameter(f"1-{MAX_REVIEWER_CHARS} characters", param_hint="--reviewer")
    home_obj = _home(home, db_url)
    if file.stat().st_size > MAX_IMPORT_BYTES:
        raise typer.BadParameter(f"{file.stat().st_size} bytes: at most {MAX_IMPORT_BYTES}", param_hint="FILE")
    try:
        plan = read_export(json.loads(file.read_text(encoding="utf-8")), reviewer and reviewer.strip())
    except (json.JSONDecodeError, UnicodeDecodeError, LabelStudioFormatError) as exc:
        raise typer.BadParameter(f"{file}: {exc}", param_hint="FILE") from None
    _, _, labels = _model_task(home_obj, None)
    traffic = TrafficLog(home_obj.store_url)
    skipped, imported, replaced = plan.skipped, 0, 0
    for row in plan.rows:
        if row.label is not None and labels and row.label not in labels:
            skipped["unknown_label"] += 1
            continue
        try:
            written = (traffic.add_feedback(row.request_id, row.label, reviewer=row.reviewer) if row.label is not None
                       else traffic.add_generation_feedback(row.request_id, row.reply, row.rating, reviewer=row.reviewer))
        except UnknownRequestError:
            skipped["unknown_request"] += 1
            continue
        imported += not written.unchanged
        replaced += written.replaced is not None
        skipped["unchanged"] += written.unchanged
    summary = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(skipped.items()) if n) or "nothing"
    typer.echo(f"imported {imported} feedback row(s) from {plan.tasks} task(s) ({replaced} replaced an earlier "
               f"feedback; {plan.several_annotations} task(s) had several annotations: the newest counted); "
               f"skipped: {summary}")
