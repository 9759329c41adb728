"""The shadow stage of the gate (optional, off by default: ``GateConfig.shadow.enabled``).

A challenger that passed the holdout gate is not promoted at once. It becomes the *pending
challenger*, answers a sample of live requests in shadow, and is promoted only if its agreement with
the reviewers' feedback on those requests is no worse than the champion's on the same requests.

Where the shadow answers come from. The monitor computes them, in its own process, on requests the
service has already answered and logged; the service is not changed. So the service's latency and
throughput are untouched, no shadow answer is ever returned to a client, and none is written to the
traffic log (they live only in the monitor's state, :data:`SHADOW_KEY`). What that means: the
challenger answers each sampled request at the monitor's next cycle (seconds to minutes after the
champion did), on the very text the champion answered, loaded from the very files it would serve
from, so the quality comparison is paired and fair; what the stage does not see is how the challenger
behaves *as a server* (its latency, errors, memory under load): the post-swap watch judges that
after a promotion. The monitor's cycle grows by the challenger's inference on at most
``max_rows_per_window`` rows (a tiny classifier: milliseconds; MiniLM: under 1 s per 100 texts on
CPU, as its embeddings of 500 texts took 3.9 s in monitoring/embeddings.py; SmolLM2-135M: ~1.3 s per
reply on CPU, as the gate's 48 replies take ~1 min in training/generation.py, so ~80 s for 64).

The stage, cycle by cycle:

1. a retrain whose challenger passed the holdout gate saves it without promoting it
   (:func:`tuneloop.monitoring.retrain.retrain_and_gate`), and :func:`begin` makes it the pending
   challenger: the monitor state :data:`SHADOW_KEY` (with the :class:`ShadowConfig` of that moment) and
   a ``shadowed`` event with verdict ``pending``. Only requests logged after this moment (``seq`` above
   the newest row then) are shadowed, so the challenger never trained on one of them. A newer
   challenger that becomes pending replaces (drops) an older one;
2. each judged window (:meth:`ShadowStage.step`): the challenger answers the window's rows of a seeded
   sample (``sample_share`` of request ids, chosen by a hash of the id and ``seed``, so a request is in
   or out whatever window it falls in), at most ``max_rows_per_window`` per window and ``max_kept`` in
   all; feedback that arrives later is matched to the kept rows by request id;
3. once ``min_rows`` shadowed requests have reviewer feedback:
   :func:`~tuneloop.monitoring.shadow_rules.judge_shadow`. The rule:
   **promote when challenger agreement >= champion agreement - tolerance** on those requests
   (``registry.promote``, actor ``monitor``), otherwise drop the challenger; either way a ``shadowed``
   event with both agreements, the row count and the rule;
4. after ``max_wait_windows`` judged windows without enough feedback: dropped, with the reason. Also
   dropped: a challenger whose champion changed meanwhile (a manual promotion or a rollback: its
   holdout gate compared it with another model) and a challenger blocked meanwhile.

Agreement with the feedback, per task: classification, accuracy (the answer equals the reviewer's
label); generation, mean ROUGE-L F-measure of the reply against the reviewer's corrected reply (rows
with only a rating do not count). The champion's side is what it answered and the service logged.
The pure parts (the sample, the answers, agreement, the rule) are in
:mod:`tuneloop.monitoring.shadow_rules`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.monitoring.gate import ShadowConfig
from tuneloop.monitoring.shadow_rules import (
    AGREEMENT_METRIC,
    ANSWER_COLUMN,
    TRUTH_COLUMN,
    Answerer,
    ShadowVerdict,
    agreement_scores,
    answer_texts,
    in_sample,
    judge_shadow,
)
from tuneloop.state.audit import AuditLog
from tuneloop.state.events import SHADOWED, EventLog
from tuneloop.state.home import Home
from tuneloop.state.registry import ModelNotFoundError, get_model, promote, read_champion
from tuneloop.state.traffic_store import TrafficLog
from tuneloop.training.task import task_of

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SHADOW_KEY = "shadow"  # monitor_state: the pending challenger and its shadow answers (see begin())
ACTOR = "monitor"  # the events' actor: the monitor computes the shadow answers and promotes
PENDING, PROMOTED, DROPPED = "pending", "promoted", "dropped"  # verdicts of ShadowOutcome and the events
FEEDBACK_PAGE = 5000  # feedback rows read per cycle (the rest come next cycle): a bounded read
MAX_ANSWER_CHARS = 4000  # a kept answer is cut to this many characters (bounds the state row; replies are shorter)


@dataclass(frozen=True)
class ShadowOutcome:
    """What one shadow step did (:meth:`ShadowStage.step`).

    Attributes:
        verdict: ``pending`` (still waiting), ``promoted`` or ``dropped``.
        challenger_tag: the pending challenger.
        reason: why, in words.
        shadowed: requests answered in shadow so far (kept in the state).
        with_feedback: how many of them have reviewer feedback.
        added: requests answered in shadow in this step.
        windows: judged windows with requests logged since the challenger became pending (this one
            included): what ``max_wait_windows`` counts.
        challenger_agreement, champion_agreement: the verdict's figures (None before a verdict).
    """

    verdict: str
    challenger_tag: str
    reason: str
    shadowed: int
    with_feedback: int
    added: int
    windows: int
    challenger_agreement: float | None = None
    champion_agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def begin(home: Home, audit: AuditLog, challenger_tag: str, champion_tag: str, cfg: ShadowConfig, *,
          since_seq: int, feedback_cursor: int) -> None:
    """Make ``challenger_tag`` the pending challenger (step 1 of the module docstring); a challenger
    pending already is dropped (``shadowed`` event, verdict ``dropped``: superseded).

    Args:
        home: the home (its event log).
        audit: where the state goes (:data:`SHADOW_KEY`).
        challenger_tag: a saved challenger that passed the holdout gate (not promoted).
        champion_tag: the champion it was gated against.
        cfg: the shadow settings; stored with the state, so the monitor runs the stage by the settings
            of the process that gated it (a ``tuneloop retrain`` job's configuration, say).
        since_seq: only requests with a larger ``seq`` are shadowed: the newest seq once the
            challenger is saved.
        feedback_cursor: feedback is read from above this feedback seq (the newest the retrain saw).
    """
    events = EventLog(home.store_url)
    old = audit.get_state(SHADOW_KEY)
    if old:
        events.record(SHADOWED, f"superseded by {challenger_tag} before a shadow verdict", tag=old["challenger"],
                      actor=ACTOR, detail={"verdict": DROPPED, "superseded_by": challenger_tag,
                                           "shadowed": len(old["rows"]), "windows": old["windows"]})
    task = task_of(dict(get_model(home, challenger_tag).info.metadata)).name
    audit.set_state(SHADOW_KEY, {"challenger": challenger_tag, "champion": champion_tag, "task": task,
                                 "since_seq": int(since_seq), "feedback_cursor": int(feedback_cursor),
                                 "started_at": time.time(), "windows": 0, "config": cfg.model_dump(), "rows": {}})
    events.record(SHADOWED, f"passed the holdout gate; in shadow on live requests after seq {since_seq} before "
                  "promotion", tag=challenger_tag, actor=ACTOR,
                  detail={"verdict": PENDING, "champion": champion_tag, "since_seq": int(since_seq),
                          "config": cfg.model_dump()})


def pending_challenger(audit: AuditLog) -> str | None:
    """The tag of the challenger in shadow, or None."""
    state = audit.get_state(SHADOW_KEY)
    return state["challenger"] if state else None


class ShadowStage:
    """The stateful step of the shadow stage, one per monitor: loads the pending challenger once per
    tag and answers sampled window rows with it (state in the audit table, :data:`SHADOW_KEY`).

    Args:
        home: the home (model store, champion pointer, event log).
        traffic: the traffic log (feedback; read only: shadow answers are never logged there).
        audit: the monitor state.
        threads: torch intra-op threads while the challenger answers (None: the process setting; the
            monitor passes ``MonitorConfig.embed_threads`` so the service keeps a core).
        answer: how a loaded challenger answers texts (default :func:`answer_texts`).
    """

    def __init__(self, home: Home, traffic: TrafficLog, audit: AuditLog, threads: int | None = None,
                 answer: Answerer = answer_texts) -> None:
        self.home, self.traffic, self.audit, self.threads, self.answer = home, traffic, audit, threads, answer
        self._predictor: tuple[str, Any] | None = None
        self._events: EventLog | None = None

    @property
    def events(self) -> EventLog:
        """The home's event log, opened once for the stage's life (each cycle reads and appends to it)."""
        if self._events is None:
            self._events = EventLog(self.home.store_url)
        return self._events

    def predictor(self, tag: str, task: str) -> Any:
        """The challenger ``tag`` loaded for inference on the CPU (cached per tag)."""
        if self._predictor is None or self._predictor[0] != tag:
            from tuneloop.training.task import get_task

            self._predictor = (tag, get_task(task).load_predictor(Path(get_model(self.home, tag).path), device="cpu"))
        return self._predictor[1]

    def step(self, window: pd.DataFrame) -> ShadowOutcome | None:
        """One cycle of the stage on a judged window (steps 2-4 of the module docstring).

        Args:
            window: the judged rows (``TrafficLog.read_window``: ``seq, request_id, text, label,
                model_tag, true_label, reply, true_reply, ...``).

        Returns:
            None when no challenger is pending; else the ShadowOutcome (the state is stored, or
            cleared after a verdict).
        """
        state = self.audit.get_state(SHADOW_KEY)
        if not state:
            return None
        cfg = ShadowConfig(**state["config"])
        tag, task = state["challenger"], state["task"]
        champion = read_champion(self.home)
        if champion is None or champion.tag != state["champion"]:
            now = champion.tag if champion else "none"
            return self._drop(state, f"the champion changed from {state['champion']} to {now} while {tag} was in "
                              "shadow (a manual promotion or a rollback): its holdout gate compared it with another model")
        if self.events.is_blocked(tag):
            return self._drop(state, f"{tag} was blocked while in shadow")
        if window.empty or int(window["seq"].max()) <= state["since_seq"]:  # all logged before it was pending
            paired = sum(r["truth"] is not None for r in state["rows"].values())
            return ShadowOutcome(PENDING, tag, f"no request logged since seq {state['since_seq']} in this window",
                                 len(state["rows"]), paired, 0, state["windows"])
        try:
            added = self._shadow_rows(state, window, cfg)
        except ModelNotFoundError as exc:
            return self._drop(state, f"{tag} cannot be loaded: {exc}")
        self._match_feedback(state)
        state["windows"] += 1
        paired = [r for r in state["rows"].values() if r["truth"] is not None]
        if len(paired) >= cfg.min_rows:
            metric = AGREEMENT_METRIC[task]
            truths = [r["truth"] for r in paired]
            verdict = judge_shadow(agreement_scores(task, [r["challenger"] for r in paired], truths),
                                   agreement_scores(task, [r["champion"] for r in paired], truths), cfg, metric)
            return self._conclude(state, verdict, added)
        if state["windows"] >= cfg.max_wait_windows:
            return self._drop(state, f"not enough feedback: {len(paired)} of {len(state['rows'])} shadowed requests "
                              f"have reviewer feedback after {state['windows']} windows; the verdict needs "
                              f"{cfg.min_rows} (min_rows) within {cfg.max_wait_windows} (max_wait_windows)", added)
        self.audit.set_state(SHADOW_KEY, state)
        return ShadowOutcome(PENDING, tag, f"{len(paired)} of {cfg.min_rows} shadowed requests with feedback after "
                             f"{state['windows']} of at most {cfg.max_wait_windows} windows",
                             len(state["rows"]), len(paired), added, state["windows"])

    def _shadow_rows(self, state: dict, window: pd.DataFrame, cfg: ShadowConfig) -> int:
        """Answer the window's sampled, not yet kept rows logged after ``since_seq`` with the challenger
        and keep them (with the champion's logged answer and any feedback already in the window)."""
        room = min(cfg.max_rows_per_window, cfg.max_kept - len(state["rows"]))
        if room <= 0 or window.empty:
            return 0
        task, rows = state["task"], state["rows"]
        fresh = window[(window["seq"] > state["since_seq"]) & ~window["request_id"].isin(list(rows))]
        fresh = fresh[in_sample(fresh["request_id"].astype(str).tolist(), cfg.sample_share, cfg.seed)]
        fresh = fresh[fresh[ANSWER_COLUMN[task]].notna()].head(room)
        if fresh.empty:
            return 0
        answers = self._answer(state, fresh["text"].fillna("").astype(str).tolist(), cfg)
        import pandas as pd

        truth = TRUTH_COLUMN[task]
        kept = 0
        for (_, row), answer in zip(fresh.iterrows(), answers):
            if answer is None:
                continue
            has_truth = truth in row.index and pd.notna(row[truth])
            rows[str(row["request_id"])] = {"seq": int(row["seq"]), "champion_tag": row.get("model_tag"),
                                            "champion": str(row[ANSWER_COLUMN[task]])[:MAX_ANSWER_CHARS],
                                            "challenger": answer[:MAX_ANSWER_CHARS],
                                            "truth": str(row[truth]) if has_truth else None}
            kept += 1
        return kept

    def _answer(self, state: dict, texts: list[str], cfg: ShadowConfig) -> list[str | None]:
        """The challenger's answers, with torch limited to ``threads`` intra-op threads."""
        import torch

        predictor = self.predictor(state["challenger"], state["task"])
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self.answer(state["task"], predictor, texts, cfg)
        finally:
            torch.set_num_threads(previous)

    def _match_feedback(self, state: dict) -> None:
        """Read feedback newer than the state's cursor (one bounded page) into the kept rows."""
        labelled = self.traffic.labelled(after_feedback_seq=state["feedback_cursor"], limit=FEEDBACK_PAGE)
        if labelled.empty:
            return
        truth = TRUTH_COLUMN[state["task"]]
        for rid, value in zip(labelled["request_id"], labelled[truth]):
            row = state["rows"].get(str(rid))
            if row is not None and isinstance(value, str):  # a rating alone leaves true_reply None
                row["truth"] = str(value)
        state["feedback_cursor"] = int(labelled["feedback_seq"].max())

    def _conclude(self, state: dict, verdict: ShadowVerdict, added: int) -> ShadowOutcome:
        """Promote or drop after a verdict; record the ``shadowed`` event; clear the state."""
        tag = state["challenger"]
        detail = {"verdict": PROMOTED if verdict.promote else DROPPED, **asdict(verdict),
                  "shadowed": len(state["rows"]), "windows": state["windows"], "since_seq": state["since_seq"],
                  "champion": state["champion"]}
        self.events.record(SHADOWED, verdict.reason, tag=tag, actor=ACTOR, detail=detail)
        if verdict.promote:
            promote(self.home, tag, reason=verdict.reason, actor=ACTOR, detail={"shadow": detail})
        self.audit.set_state(SHADOW_KEY, None)
        log.info("shadow: %s: %s", tag, verdict.reason)
        return ShadowOutcome(detail["verdict"], tag, verdict.reason, len(state["rows"]), verdict.rows, added,
                             state["windows"], verdict.challenger_agreement, verdict.champion_agreement)

    def _drop(self, state: dict, reason: str, added: int = 0) -> ShadowOutcome:
        """Drop the pending challenger (a ``shadowed`` event, verdict ``dropped``) and clear the state."""
        tag = state["challenger"]
        paired = sum(r["truth"] is not None for r in state["rows"].values())
        self.events.record(SHADOWED, reason, tag=tag, actor=ACTOR, detail={
            "verdict": DROPPED, "shadowed": len(state["rows"]), "with_feedback": paired, "windows": state["windows"],
            "since_seq": state["since_seq"], "champion": state["champion"]})
        self.audit.set_state(SHADOW_KEY, None)
        log.info("shadow: dropped %s: %s", tag, reason)
        return ShadowOutcome(DROPPED, tag, reason, len(state["rows"]), paired, added, state["windows"])
