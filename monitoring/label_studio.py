"""Label Studio in and out: the label queue as Label Studio tasks with the model's answer as a
pre-annotation, and Label Studio's JSON export read back as reviewer feedback. Pure conversions
(dicts in, dicts out); ``tuneloop labels`` (:mod:`tuneloop.apps.labels_cli`) does the files and the store.

Formats, as Label Studio documents them (labelstud.io/guide/predictions, /guide/export,
/guide/task_format, /tags/choices, /tags/textarea):

* import: a JSON list of tasks ``{"data": {...}, "predictions": [{"model_version", "score", "result":
  [{"id", "from_name", "to_name", "type", "value"}]}]}``; the labeling config's object tags read
  ``data`` fields by ``$name``. A ``choices`` result's value is ``{"choices": [...]}``, a ``textarea``
  result's ``{"text": [...]}``.
* export ("JSON"): the same tasks (``data`` kept as imported) with ``"annotations": [{"id", "result":
  [...], "was_cancelled", "completed_by", "created_at", "updated_at", ...}]``. ``completed_by`` is the
  annotator's user id (an integer), or in some versions and exports a user object ``{"id", "email",
  ...}``.

Our controls: classification, a ``Choices`` named ``label`` (one choice per model label) on the
``Text`` named ``text`` (``$text``, the request); generation, a ``TextArea`` named ``reply``
pre-filled with the model's reply (edit it to correct it) and a ``Choices`` named ``rating``
(``good`` / ``bad``). Every task's ``data`` carries ``request_id``, the key back to the traffic log.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TEXT_OBJECT = "text"  # the <Text> tag showing the request (data field $text)
LABEL_CONTROL = "label"  # classification: <Choices>
REPLY_CONTROL = "reply"  # generation: <TextArea>
RATING_CONTROL = "rating"  # generation: <Choices>
RATINGS = ("good", "bad")
MAX_TASKS = 100_000  # an import holds at most this many tasks (a queue is 50 by default)
MAX_LABEL_CHARS = 256  # feedback.true_label
MAX_REPLY_CHARS = 8000  # the service's default TUNELOOP_GEN_MAX_CHARS for a corrected reply
MAX_REVIEWER_CHARS = 128  # feedback.reviewer
MAX_REQUEST_ID_CHARS = 64  # predictions.request_id


class LabelStudioFormatError(ValueError):
    """A file that is not a Label Studio JSON export (the message says what is wrong and where)."""


def labeling_config(task: str, labels: list[str] | None = None) -> str:
    """The labeling config XML of a project for the tasks :func:`export_tasks` writes.

    Args:
        task: ``classification`` or ``generation``.
        labels: classification: the model's labels, one ``<Choice>`` each (values XML-escaped).

    Raises:
        ValueError: another task, or a classification without labels.
    """
    view = ET.Element("View")
    if task == "classification":
        if not labels:
            raise ValueError("a classification labeling config needs the model's labels")
        ET.SubElement(view, "Header", value="Choose the right label for this request")
        ET.SubElement(view, "Text", name=TEXT_OBJECT, value=f"${TEXT_OBJECT}")
        choices = ET.SubElement(view, "Choices", name=LABEL_CONTROL, toName=TEXT_OBJECT, choice="single",
                                showInline="false", required="true")
        for label in labels:
            ET.SubElement(choices, "Choice", value=str(label))
    elif task == "generation":
        ET.SubElement(view, "Header", value="Request")
        ET.SubElement(view, "Text", name=TEXT_OBJECT, value=f"${TEXT_OBJECT}")
        ET.SubElement(view, "Header", value="The model's reply: edit it where it is wrong, and rate the original")
        ET.SubElement(view, "TextArea", name=REPLY_CONTROL, toName=TEXT_OBJECT, editable="true", rows="6",
                      maxSubmissions="1")
        rating = ET.SubElement(view, "Choices", name=RATING_CONTROL, toName=TEXT_OBJECT, choice="single",
                               showInline="true")
        for value in RATINGS:
            ET.SubElement(rating, "Choice", value=value)
    else:
        raise ValueError(f"no Label Studio config for task {task!r}: use classification or generation")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def _result(rid: str, control: str, kind: str, value: dict) -> dict:
    return {"id": f"{rid[:24]}-{control}", "from_name": control, "to_name": TEXT_OBJECT, "type": kind, "value": value}


def export_tasks(items: list[dict], task: str, model_tag: str, labels: list[str] | None = None) -> list[dict]:
    """Label Studio tasks for label-queue items, each with the model's answer as a pre-annotation.

    Args:
        items: the queue's items (:mod:`tuneloop.monitoring.label_queue`: ``request_id, text, label,
            confidence, score``, and ``model_tag`` / ``reply`` where the queue has them).
        task: ``classification`` or ``generation``.
        model_tag: the tag of the model that answered, for items without their own ``model_tag``.
        labels: classification: the model's labels; a predicted label outside them is not pre-annotated.

    Returns:
        ``[{"data": {"text", "request_id", "model_tag", "confidence", "queue_score"[, "reply"]},
        "predictions": [{"model_version", "score", "result"}]}]``: classification, the predicted label as
        a ``choices`` result; generation, the reply as a ``textarea`` result (no prediction without one).
    """
    allowed = set(labels or ())
    tasks = []
    for item in items:
        rid, tag = str(item["request_id"]), str(item.get("model_tag") or model_tag)
        confidence = float(item["confidence"]) if item.get("confidence") is not None else None
        data: dict[str, Any] = {"text": str(item["text"]), "request_id": rid, "model_tag": tag,
                                "confidence": confidence, "queue_score": item.get("score")}
        result = []
        if task == "classification" and item.get("label") in allowed:
            result = [_result(rid, LABEL_CONTROL, "choices", {"choices": [str(item["label"])]})]
        elif task == "generation" and item.get("reply"):
            data["reply"] = str(item["reply"])
            result = [_result(rid, REPLY_CONTROL, "textarea", {"text": [data["reply"]]})]
        prediction = {"model_version": tag, "result": result}
        if confidence is not None:
            prediction["score"] = confidence
        tasks.append({"data": data, "predictions": [prediction] if result else []})
    return tasks


@dataclass(frozen=True)
class ImportedFeedback:
    """One annotation as feedback: ``label`` (classification), or ``reply`` and/or ``rating`` (+1 good,
    -1 bad; generation); ``reviewer`` the annotator (or the importer's choice)."""

    request_id: str
    reviewer: str | None
    label: str | None = None
    reply: str | None = None
    rating: int | None = None


@dataclass
class ImportPlan:
    """What a Label Studio export holds: feedback rows in task order, and counts of what was skipped
    (``cancelled``, ``no_annotation``, ``no_request_id``, ``empty``: no label / no correction or
    rating, ``too_long``) and of ``several_annotations`` (tasks whose newest annotation was taken)."""

    rows: list[ImportedFeedback] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    several_annotations: int = 0
    tasks: int = 0


def annotator(completed_by: Any) -> str | None:
    """The reviewer name of a Label Studio ``completed_by``: the e-mail of a user object, else its id
    (``labelstudio:<id>``); a string as it is; None when absent. At most 128 characters."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or (f"labelstudio:{completed_by['id']}"
                                                     if completed_by.get("id") is not None else None)
    elif isinstance(completed_by, int) and not isinstance(completed_by, bool):
        completed_by = f"labelstudio:{completed_by}"
    return str(completed_by)[:MAX_REVIEWER_CHARS] if completed_by not in (None, "") else None


def _newest(annotations: list[dict]) -> dict:
    """The newest annotation (``updated_at``, else ``created_at``: ISO 8601 text; the later in the list on a tie)."""
    order = sorted(range(len(annotations)),
                   key=lambda i: (str(annotations[i].get("updated_at") or annotations[i].get("created_at") or ""), i))
    return annotations[order[-1]]


def _values(result: list, control: str, key: str) -> list[str]:
    """The ``value[key]`` strings of the results of ``control`` (a string value counts as one)."""
    found = []
    for region in result if isinstance(result, list) else []:
        if isinstance(region, dict) and region.get("from_name") == control and isinstance(region.get("value"), dict):
            value = region["value"].get(key)
            found += [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    return found


def read_export(tasks: Any, reviewer: str | None = None) -> ImportPlan:
    """Feedback from a Label Studio JSON export of tasks made by :func:`export_tasks`.

    Per task the newest annotation that was not cancelled (``was_cancelled``) counts (several
    annotators: the newest wins, as a second ``/feedback`` does); classification: its ``label``
    choice; generation: the ``reply`` text when it differs from the model's (``data.reply``) and the
    ``rating`` choice.

    Args:
        tasks: the parsed export (a list of task dicts).
        reviewer: the reviewer of every row; None: each annotation's annotator (:func:`annotator`).

    Raises:
        LabelStudioFormatError: not a list of task objects, or more than :data:`MAX_TASKS`.
    """
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelStudioFormatError("expected Label Studio's JSON export: a list of task objects "
                                     "(Export -> JSON in the project), not JSON_MIN or CSV")
    if len(tasks) > MAX_TASKS:
        raise LabelStudioFormatError(f"{len(tasks)} tasks: at most {MAX_TASKS} per import")
    plan = ImportPlan(tasks=len(tasks))
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        rid = data.get("request_id")
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        live = [a for a in annotations if not a.get("was_cancelled")]
        plan.skipped["cancelled"] += len(annotations) - len(live)
        if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID_CHARS:
            plan.skipped["no_request_id"] += 1
            continue
        if not live:
            plan.skipped["no_annotation"] += 1
            continue
        plan.several_annotations += len(live) > 1
        chosen = _newest(live)
        who = reviewer or annotator(chosen.get("completed_by"))
        result = chosen.get("result") or []
        labels = _values(result, LABEL_CONTROL, "choices")
        replies = _values(result, REPLY_CONTROL, "text")
        ratings = [r for r in _values(result, RATING_CONTROL, "choices") if r in RATINGS]
        if labels:
            row = ImportedFeedback(rid, who, label=labels[0].strip())
        else:
            reply = "\n".join(replies).strip() or None
            if reply is not None and reply == str(data.get("reply") or "").strip():
                reply = None  # the model's reply left as it was: no correction
            rating = {"good": 1, "bad": -1}[ratings[0]] if ratings else None
            row = ImportedFeedback(rid, who, reply=reply, rating=rating)
        if (row.label is None and row.reply is None and row.rating is None) or row.label == "":
            plan.skipped["empty"] += 1
        elif len(row.label or "") > MAX_LABEL_CHARS or len(row.reply or "") > MAX_REPLY_CHARS:
            plan.skipped["too_long"] += 1
        else:
            plan.rows.append(row)
    return plan
