"""What ``tuneloop models`` shows, as plain rows and dicts: the registry's versions with their markers,
one model's detail and lineage chain, and two models' metrics side by side.

Everything here reads the home (the BentoML store, the champion pointer, the event log of
:mod:`tuneloop.state.events`) and returns JSON-able values; rendering is the CLI's
(:mod:`tuneloop.apps.models_cli`). A model's *lineage* is what made it: the ``lineage`` dict a retrain
saves in its metadata (:func:`tuneloop.monitoring.retrain.retrain_and_gate`: trigger, feedback rows,
data hash, parent) and the events of its tag (gate verdict, promotions, rollbacks, blocks).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.state.events import BLOCKED, GATED, PROMOTED, ROLLED_BACK, SHADOWED, UNBLOCKED, WATCHED, Event, EventLog
from tuneloop.state.home import Home
from tuneloop.state.registry import ModelNotFoundError, get_model, list_models, read_champion, rollback_target

MODEL_KINDS = (GATED, PROMOTED, ROLLED_BACK, BLOCKED, UNBLOCKED, WATCHED, SHADOWED)  # events about a model version
MAX_CHAIN = 100  # ancestors followed by a lineage chain (a guard against a parent cycle in hand-edited metadata)
NO_VERDICT = "-"  # the gate verdict of a model no gate judged (the first model, a forced promotion)


def iso_time(value: float | datetime) -> str:
    """A Unix time (s) or a datetime as ISO 8601 in UTC, to the second."""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, tz=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def store_names(home: Home) -> list[str]:
    """The model names in the home's BentoML store (``tuneloop-classifier``, ``tuneloop-generator``, or a
    ``TrainConfig.model_name`` of one's own): the folders of ``<home>/bentoml/models``, BentoML's store
    layout ``<name>/<version>/``."""
    if not home.models_dir.is_dir():
        return []
    return sorted(p.name for p in home.models_dir.iterdir() if p.is_dir())


def stored_models(home: Home) -> list:
    """Every stored version of every name (``bentoml.Model``), oldest first."""
    models = [m for name in store_names(home) for m in list_models(home, name)]
    return sorted(models, key=lambda m: m.info.creation_time)


def model_events(home: Home) -> dict[str, list[Event]]:
    """The lifecycle events (:data:`MODEL_KINDS`) of every tag, oldest first (one query per kind)."""
    log = EventLog(home.store_url)
    by_tag: dict[str, list[Event]] = defaultdict(list)
    for kind in MODEL_KINDS:
        for event in log.events(kind=kind):
            if event.tag:
                by_tag[event.tag].append(event)
    for events in by_tag.values():
        events.sort(key=lambda e: e.id)
    return dict(by_tag)


def primary_metric(metadata: dict) -> dict:
    """``{"name", "value"}``: the task's primary metric (classification ``macro_f1``, generation ``rougeL``)
    and its test-split value from the metadata training saved (None when not recorded)."""
    from tuneloop.training.task import task_of

    try:
        name = task_of(metadata).primary_metric
    except ValueError:  # a task this tuneloop does not know
        return {"name": None, "value": None}
    test = (metadata.get("metrics") or {}).get("test") or {}
    value = test.get(name)
    return {"name": name, "value": value if isinstance(value, (int, float)) else None}


def gate_verdict(events: list[Event]) -> dict | None:
    """The newest ``gated`` event of a tag as ``{"verdict": "passed" | "refused", "reason", "actor", "at",
    "champion", "challenger", "holdout_rows"}``, or None when no gate judged it."""
    gated = [e for e in events if e.kind == GATED]
    if not gated:
        return None
    event = gated[-1]
    return {"verdict": "passed" if event.detail.get("promoted") else "refused", "reason": event.reason,
            "actor": event.actor, "at": iso_time(event.created_at), "champion": event.detail.get("champion"),
            "challenger": event.detail.get("challenger"), "holdout_rows": event.detail.get("holdout_rows")}


def is_blocked(events: list[Event]) -> bool:
    """True when the newest block/unblock event among ``events`` is a block (as ``EventLog.is_blocked``)."""
    marks = [e for e in events if e.kind in (BLOCKED, UNBLOCKED)]
    return bool(marks) and marks[-1].kind == BLOCKED


def markers(home: Home) -> tuple[str | None, str | None]:
    """(champion tag, previous champion tag): the champion pointer's tag and the tag ``tuneloop models
    rollback`` would serve (:func:`tuneloop.state.registry.rollback_target`); None where there is none."""
    pointer = read_champion(home)
    if pointer is None:
        return None, None
    try:
        return pointer.tag, rollback_target(home)
    except ModelNotFoundError:
        return pointer.tag, None


def model_row(model, events: list[Event], champion: str | None, previous: str | None) -> dict:
    """One row of ``tuneloop models list``: ``tag, name, task, created, base_model, metric {name, value},
    champion, previous`` (bools), ``gate`` (``passed`` | ``refused`` | ``-``), ``blocked``, ``parent``."""
    meta = dict(model.info.metadata)
    tag = str(model.tag)
    verdict = gate_verdict(events)
    return {"tag": tag, "name": model.tag.name, "task": meta.get("task", "classification"),
            "created": iso_time(model.info.creation_time), "base_model": meta.get("base_model"),
            "metric": primary_metric(meta), "champion": tag == champion, "previous": tag == previous,
            "gate": verdict["verdict"] if verdict else NO_VERDICT, "blocked": is_blocked(events),
            "parent": meta.get("parent")}


def model_rows(home: Home) -> dict:
    """``tuneloop models list``: ``{"champion", "previous", "models": [model_row, ...]}``, oldest first."""
    champion, previous = markers(home)
    events = model_events(home)
    rows = [model_row(m, events.get(str(m.tag), []), champion, previous) for m in stored_models(home)]
    return {"champion": champion, "previous": previous, "models": rows}


def resolve_tag(home: Home, tag: str | None) -> str:
    """``tag`` as stored (``name:version``; a bare name means its newest version), or the champion's when None.

    Raises:
        ModelNotFoundError: no such model, or no champion when ``tag`` is None.
    """
    if tag is None:
        pointer = read_champion(home)
        if pointer is None:
            raise ModelNotFoundError(f"no champion model in {home.root}: name a TAG (`tuneloop models list`)")
        tag = pointer.tag
    return str(get_model(home, tag).tag)


def _event_summary(event: Event) -> dict:
    return {"kind": event.kind, "at": iso_time(event.created_at), "actor": event.actor, "reason": event.reason,
            "detail": event.detail}


def chain_entry(home: Home, tag: str, events: list[Event]) -> dict:
    """One link of a lineage chain: ``tag, created, trigger`` (None: trained by hand, no lineage),
    ``feedback``, ``data_sha256, parent, gate`` (:func:`gate_verdict`), ``promotions`` and ``rollbacks``
    (events of the tag), ``blocked``; ``missing`` True (and the rest None) when the store lacks it."""
    try:
        model = get_model(home, tag)
    except ModelNotFoundError:
        return {"tag": tag, "missing": True, "parent": None}
    meta = dict(model.info.metadata)
    lineage = meta.get("lineage") or {}
    return {"tag": tag, "missing": False, "created": iso_time(model.info.creation_time),
            "trigger": lineage.get("trigger"), "feedback": lineage.get("feedback"),
            "data_sha256": lineage.get("data_sha256") or meta.get("data_sha256"),
            "parent": lineage.get("parent") or meta.get("parent"), "gate": gate_verdict(events),
            "promotions": [_event_summary(e) for e in events if e.kind == PROMOTED],
            "rollbacks": [_event_summary(e) for e in events if e.kind == ROLLED_BACK],
            "blocked": is_blocked(events)}


def lineage_chain(home: Home, tag: str, events: dict[str, list[Event]] | None = None) -> list[dict]:
    """The model ``tag``, its parent, the parent's parent, ... (:func:`chain_entry` each), at most
    :data:`MAX_CHAIN` links; ends at a model without a parent, a missing one, or a repeated tag."""
    events = model_events(home) if events is None else events
    chain: list[dict] = []
    current: str | None = tag
    while current and len(chain) < MAX_CHAIN and current not in {c["tag"] for c in chain}:
        entry = chain_entry(home, current, events.get(current, []))
        chain.append(entry)
        current = entry["parent"]
    return chain


def read_card(model) -> str | None:
    """The model card (Markdown) saved in the version's folder, or None when it has none."""
    from tuneloop.training.card import CARD_FILE

    try:
        return (Path(model.path) / CARD_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def model_detail(home: Home, tag: str | None = None) -> dict:
    """``tuneloop models show``: the model ``tag`` (None: the champion) as ``{"tag", "path", "row"
    (:func:`model_row`), "metadata", "metrics", "card", "lineage" (:func:`lineage_chain`), "events"}``.

    Raises:
        ModelNotFoundError: no such model, or no champion when ``tag`` is None.
    """
    tag = resolve_tag(home, tag)
    model = get_model(home, tag)
    champion, previous = markers(home)
    events = model_events(home)
    meta = dict(model.info.metadata)
    return {"tag": tag, "path": str(model.path), "row": model_row(model, events.get(tag, []), champion, previous),
            "metadata": {k: v for k, v in meta.items() if k not in ("metrics", "lineage")},
            "metrics": meta.get("metrics") or {}, "card": read_card(model),
            "lineage": lineage_chain(home, tag, events), "events": [_event_summary(e) for e in events.get(tag, [])]}


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, int | float]:
    """Numeric leaves of a (nested) metrics dict keyed by dotted path (``test.macro_f1``); booleans,
    strings and lists (per-class reports) are left out."""
    flat: dict[str, int | float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def metric_diff(a_metrics: dict, b_metrics: dict) -> list[dict]:
    """Two models' metrics side by side: ``[{"metric", "a", "b", "diff"}]`` (``diff`` = b - a; None where
    either lacks the metric), in the order of ``a``'s metrics, then ``b``'s own."""
    a, b = flat_metrics(a_metrics), flat_metrics(b_metrics)
    return [{"metric": k, "a": a.get(k), "b": b.get(k), "diff": b[k] - a[k] if k in a and k in b else None}
            for k in dict.fromkeys([*a, *b])]


def model_diff(home: Home, tag_a: str, tag_b: str) -> dict:
    """``tuneloop models diff A B``: ``{"a", "b" (tags), "metrics" (:func:`metric_diff`), "facts"
    ([{"field", "a", "b"}]: task, base model, data hash, training rows, parent)}``.

    Raises:
        ModelNotFoundError: either tag is not in the store.
    """
    a, b = get_model(home, tag_a), get_model(home, tag_b)
    ma, mb = dict(a.info.metadata), dict(b.info.metadata)
    facts = [{"field": f, "a": ma.get(f), "b": mb.get(f)}
             for f in ("task", "base_model", "data_sha256", "train_rows", "parent")]
    return {"a": str(a.tag), "b": str(b.tag), "metrics": metric_diff(ma.get("metrics") or {}, mb.get("metrics") or {}),
            "facts": facts}


def describe_trigger(trigger: dict | None) -> str:
    """One line for a lineage trigger: ``drift, window 41-120, signals text_drift, label_drift``;
    ``-`` without one (a model trained by ``tuneloop train``)."""
    if not trigger:
        return NO_VERDICT
    parts: list[Any] = [trigger.get("kind", "?")]
    if trigger.get("decision_id"):
        parts.append(f"decision {trigger['decision_id']}")
    if trigger.get("window"):
        parts.append("window {}-{}".format(*trigger["window"]))
    if trigger.get("signals"):
        parts.append("signals " + ", ".join(trigger["signals"]))
    if trigger.get("cron"):
        parts.append(f"cron {trigger['cron']}")
    return ", ".join(str(p) for p in parts)


def describe_feedback(feedback: dict | None) -> str:
    """One line for the feedback a model trained on: ``40 rows (32 train, 8 holdout) by alice, bob;
    requests seq 1-40``; ``-`` without any."""
    if not feedback or not feedback.get("rows"):
        return NO_VERDICT
    line = f"{feedback['rows']} rows ({feedback.get('train_rows', 0)} train, {feedback.get('holdout_rows', 0)} holdout)"
    if feedback.get("reviewers"):
        line += " by " + ", ".join(feedback["reviewers"])
    if feedback.get("request_seq"):
        line += "; requests seq {}-{}".format(*feedback["request_seq"])
    return line


def describe_event(event: dict) -> str:
    """One line for an event summary (``_event_summary``): ``2026-12-03 19:14:53 by cli: the reason``."""
    line = event["at"][:19].replace("T", " ")
    if event.get("actor"):
        line += f" by {event['actor']}"
    return f"{line}: {event['reason']}"


def describe_link(link: dict) -> list[tuple[str, str]]:
    """The (field, text) lines ``tuneloop models show`` prints for one link of a lineage chain
    (:func:`chain_entry`): trigger, feedback, data hash, gate verdict, each promotion and rollback, a block."""
    if link["missing"]:
        return [("store", "not in the store (deleted?)")]
    gate = link["gate"]
    rows = [("trigger", describe_trigger(link["trigger"])), ("feedback", describe_feedback(link["feedback"])),
            ("data sha256", link["data_sha256"] or NO_VERDICT),
            ("gate", f"{gate['verdict']}: {gate['reason']}" if gate else NO_VERDICT)]
    rows += [("promoted", describe_event(e)) for e in link["promotions"]]
    rows += [("rolled back", describe_event(e)) for e in link["rollbacks"]]
    if link["blocked"]:
        rows.append(("blocked", "yes (`tuneloop models promote --force` lifts it)"))
    return rows
