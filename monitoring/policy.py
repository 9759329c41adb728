"""The retrain decision: a pure function of one window's signals, the policy and a small state.

Rule (defaults measured on Banking77 with a quick-trained champion's real outputs, see
``benchmarks/drift_bench.py`` and the README's benchmark table):

1. A window smaller than ``min_window`` is not judged (``skip_small_window``).
2. Each counted signal fires when its p-value is below ``alpha`` corrected for the number of counted
   signals (Bonferroni: family-wise error <= alpha per window). ``accuracy_drop`` also needs
   ``min_labels_for_accuracy`` labels and a drop of at least ``max_accuracy_drop`` (practical, not
   just statistical, significance).
3. A window *alarms* when at least ``min_signals`` signals fire, or any one of ``sufficient_signals``
   fires (a significant accuracy drop on enough feedback is direct evidence on its own).
4. The model is *degraded* after ``confirm_windows`` consecutive alarming windows, or at once when
   the alarming window is *strong*: ``min_signals`` signals with p below ``strong_alpha`` (1e-4: under
   no drift two such p-values in one window have a chance of ~1e-7, so one window is its own
   confirmation; without it, a shift that starts mid-window is confirmed 100-200 requests later).
   Otherwise one alarming window answers ``wait``. Measured on 100 in-distribution streams of 5,000
   requests (benchmarks/drift_bench.py): strong_alpha 1e-3 let 3 streams alarm (the embedding and
   label tests both react to the benign intent-mix difference between the reference and the test
   split); 1e-4 none, with median detection delays of ~100 (scarce intents) and ~165 (label mix)
   requests. The label test's permutation p-value bottoms out at 1 / 2001, so it is never strong.
5. Degraded: ``cooldown`` within ``cooldown_windows`` windows / ``cooldown_seconds`` of the last
   retrain, else ``retrain`` with at least ``min_new_labels`` new labels, else ``need_labels`` (an
   alert: retraining is warranted but would learn nothing new; the monitor publishes a queue of the
   requests most worth labelling).

Univariate tests + Bonferroni as in Rabanser et al. 2019 ("Failing Loudly").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneloop.monitoring.signals import (
    ACCURACY,
    ALL_SIGNALS,
    FAMILY_ALPHA,
    KNOWN_SIGNALS,
    MAX_ACCURACY_DROP,
    MAX_BAD_RATING_RISE,
    MAX_ROUGE_DROP,
    MIN_LABELS,
    MIN_ROWS,
    RATING,
    ROUGE,
    DriftConfig,
    SignalResult,
    WindowReport,
)

Action = Literal["none", "wait", "retrain", "need_labels", "skip_small_window", "cooldown"]

# The defaults below; measured ones cite their measurement, chosen ones say so (README, "Drift policy").
MIN_WINDOW = 50  # chosen: `tuneloop monitor --min-window` default; smaller windows keep accumulating
# Two signals per alarm: alone, the label test fires in 4.4-6.8 % of windows at 0.0125 on Banking77's benign
# train/test intent mix (tests/unit/test_drift.py, test_label_test_is_calibrated_where_evidentlys_default_is_not).
MIN_SIGNALS = 2
# Two alarming windows in a row: in the simulation of tests/unit/test_drift.py (its docstring, 4-signal
# policy) 0 of 400 in-distribution windows degraded and the shift was confirmed at its 2nd window in 35/35 runs.
CONFIRM_WINDOWS = 2
# Measured (benchmarks/drift_bench.py, README "How the policy's strong_alpha was chosen"): 1e-3 let 3 of 100
# in-distribution streams alarm; 1e-4 none, detection delays 102 / 356 / 164 requests.
STRONG_ALPHA = 1e-4
MIN_NEW_LABELS = 50  # chosen (README rule 4): a retrain should learn from at least this much new feedback
COOLDOWN_WINDOWS = 3  # chosen (README rule 4): windows after a retrain during which no new one starts
COOLDOWN_SECONDS = 0.0  # off by default: the window count above is the cooldown
# Feedback signals other than accuracy_drop: the policy field holding the effect each must reach to fire.
EFFECT_THRESHOLDS = {ROUGE: "max_rouge_drop", RATING: "max_bad_rating_rise"}


class DriftPolicy(BaseModel):
    """When drift counts as degradation and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_window: int = Field(MIN_WINDOW, ge=MIN_ROWS, description="Windows with fewer rows are not judged.")
    signals: tuple[str, ...] = Field(ALL_SIGNALS, description="Signals that count (names from signals.KNOWN_SIGNALS). "
                                     "Left unset: the champion's task's signals (classification's six by default; "
                                     "see for_signals).")
    alpha: float = Field(FAMILY_ALPHA, gt=0, lt=1, description="Family-wise false-alarm level per window, all signals.")
    correction: Literal["bonferroni", "none"] = Field("bonferroni", description="Multiple-testing correction.")
    min_signals: int = Field(MIN_SIGNALS, ge=1, description="Signals that must fire in one window for it to alarm.")
    sufficient_signals: tuple[str, ...] = Field((ACCURACY,), description="Signals that alarm a window on their own "
                                                "(left unset: the task's feedback signals).")
    confirm_windows: int = Field(CONFIRM_WINDOWS, ge=1, description="Consecutive alarming windows before 'degraded'.")
    strong_alpha: float | None = Field(STRONG_ALPHA, gt=0, lt=1, description="An alarming window where min_signals "
                                       "signals have p below this is confirmed on its own; None: never.")
    min_labels_for_accuracy: int = Field(MIN_LABELS, ge=1,
                                         description="Labels in the window before accuracy_drop may fire.")
    max_accuracy_drop: float = Field(MAX_ACCURACY_DROP, ge=0, le=1,
                                     description="Absolute accuracy drop vs the reference.")
    max_rouge_drop: float = Field(MAX_ROUGE_DROP, ge=0, le=1, description="generation: drop of the live ROUGE-L "
                                  "below the reference's for rouge_drop to fire.")
    max_bad_rating_rise: float = Field(MAX_BAD_RATING_RISE, ge=0, le=1, description="generation: rise of the "
                                       "bad-rating share above its baseline for bad_rating_rise to fire.")
    min_new_labels: int = Field(MIN_NEW_LABELS, ge=0,
                                description="New labels since the last retrain needed to retrain.")
    cooldown_windows: int = Field(COOLDOWN_WINDOWS, ge=0,
                                  description="Windows after a retrain during which no new retrain starts.")
    cooldown_seconds: float = Field(COOLDOWN_SECONDS, ge=0, description="Seconds after a retrain without a new one.")

    @model_validator(mode="after")
    def _check(self) -> DriftPolicy:
        unknown = set(self.signals) - set(KNOWN_SIGNALS)
        if unknown or not self.signals:
            raise ValueError(f"signals {sorted(unknown) or '[]'} invalid; choose a non-empty subset of {KNOWN_SIGNALS}")
        if not set(self.sufficient_signals) <= set(self.signals):
            raise ValueError(f"sufficient_signals {self.sufficient_signals} must be among signals {self.signals}")
        if self.min_signals > len(self.signals):
            raise ValueError(f"min_signals={self.min_signals} > {len(self.signals)} counted signals; lower it")
        return self

    @property
    def per_signal_alpha(self) -> float:
        """The level each signal is tested at (alpha / #signals under Bonferroni)."""
        return self.alpha / len(self.signals) if self.correction == "bonferroni" else self.alpha

    def drift_config(self, **overrides) -> DriftConfig:
        """A DriftConfig whose own ``fired`` flags (and Evidently's HTML verdicts) match this policy."""
        return DriftConfig(**{"alpha": self.per_signal_alpha, "min_labels": self.min_labels_for_accuracy,
                              "max_accuracy_drop": self.max_accuracy_drop, "max_rouge_drop": self.max_rouge_drop,
                              "max_bad_rating_rise": self.max_bad_rating_rise, **overrides})

    def for_signals(self, signals: tuple[str, ...], sufficient: tuple[str, ...]) -> DriftPolicy:
        """This policy for a task that computes ``signals``, of which ``sufficient`` alarm a window alone.

        ``signals`` and ``sufficient_signals`` left at their defaults become the task's; set ones are kept
        when the task computes all of the signals, else the task's own signals count (a policy written for
        one task's signals would otherwise judge another's on signals it never computes). Sufficient
        signals the counted ones lack are dropped, and ``min_signals`` is capped at their number.

        Args:
            signals: the task's signal names (``MonitoringTask.signals``).
            sufficient: those that alarm a window on their own (``MonitoringTask.sufficient_signals``).

        Returns:
            This policy when nothing changes (classification with the defaults), else an adapted copy.
        """
        explicit = "signals" in self.model_fields_set and set(self.signals) <= set(signals)
        counted = self.signals if explicit else tuple(signals)
        wanted = self.sufficient_signals if "sufficient_signals" in self.model_fields_set else sufficient
        alone = tuple(s for s in wanted if s in counted)
        if counted == self.signals and alone == self.sufficient_signals:
            return self
        return DriftPolicy.model_validate({**self.model_dump(), "signals": counted, "sufficient_signals": alone,
                                           "min_signals": min(self.min_signals, len(counted))})


class PolicyState(BaseModel):
    """What ``decide`` remembers between windows. Immutable: ``decide`` returns a new one."""

    model_config = ConfigDict(frozen=True)

    windows: int = Field(0, description="Windows judged so far (skipped small windows excluded).")
    consecutive: int = Field(0, description="Alarming windows in a row, up to the current one.")
    labels_since_retrain: int = Field(0, description="Labels counted since the last retrain.")
    last_retrain_window: int | None = Field(None, description="Value of ``windows`` when the last retrain was decided.")
    last_retrain_at: float | None = Field(None, description="Unix seconds of the last retrain decision.")


class Decision(BaseModel):
    """The verdict on one window, with the state to pass to the next ``decide`` call."""

    degraded: bool
    action: Action
    reason: str
    fired: list[str]
    state: PolicyState
    alarm: bool = Field(False, description="The window alarmed (before confirmation).")
    strong: bool = Field(False, description="The alarm was strong enough to confirm itself.")
    labels_needed: int = Field(0, description="Labels still missing for a retrain (need_labels), else 0.")


def _fires(sig: SignalResult, report: WindowReport, policy: DriftPolicy, alpha: float) -> tuple[bool, str]:
    """Does ``sig`` fire under the policy, and a one-line account with value, threshold and p-value."""
    p = sig.p_value
    p_txt = "n/a" if p is None else f"{p:.2g}"
    if sig.name == ACCURACY:
        if sig.value is None:
            return False, f"{ACCURACY}: no labelled rows"
        fired = (p is not None and p < alpha and report.n_labels >= policy.min_labels_for_accuracy
                 and sig.value >= policy.max_accuracy_drop)
        return fired, (f"{ACCURACY}: {report.reference_accuracy:.3f} -> {report.accuracy:.3f} "
                       f"on {report.n_labels} labels "
                       f"(drop {sig.value:.3f} vs >= {policy.max_accuracy_drop:.3f}, need >= "
                       f"{policy.min_labels_for_accuracy} labels; Fisher p={p_txt} vs < {alpha:.3g})")
    if sig.name in EFFECT_THRESHOLDS:  # like accuracy_drop: enough feedback and an effect that matters
        if sig.value is None:
            return False, f"{sig.name}: no feedback"
        n, effect = int(sig.details.get("n_labels", 0)), getattr(policy, EFFECT_THRESHOLDS[sig.name])
        fired = (p is not None and p < alpha and n >= policy.min_labels_for_accuracy and sig.value >= effect)
        return fired, (f"{sig.name}: {sig.method.split(' (')[0]} {sig.value:+.3f} on {n} labels (vs >= {effect:.3f}, "
                       f"need >= {policy.min_labels_for_accuracy} labels; p={p_txt} vs < {alpha:.3g})")
    fired = p is not None and p < alpha
    method = sig.method.split(" (")[0]
    if sig.value is not None and sig.value != p:  # a score with its own p-value (text: ROC AUC)
        return fired, f"{sig.name}: {method} {sig.value:.3f}, p={p_txt} vs < {alpha:.3g}"
    return fired, f"{sig.name}: {method} {p_txt} vs < {alpha:.3g}"


def decide(signals: WindowReport, policy: DriftPolicy, state: PolicyState, *,
           new_labels: int | None = None, now: float | None = None) -> Decision:
    """Judge one window. Pure: the same inputs give the same Decision, nothing else is touched.

    Args:
        signals: the window's ``compute_signals`` result.
        policy: thresholds and rules.
        state: the state returned with the previous Decision (``PolicyState()`` at the start).
        new_labels: labels available for retraining since the last retrain; default
            ``state.labels_since_retrain + signals.n_labels``.
        now: Unix seconds for the time cooldown; default ``signals.computed_at``.

    Returns:
        Decision whose ``state`` is to be passed to the next call. After ``retrain`` the state starts
        the cooldown and resets the consecutive count and the label count.
    """
    now = signals.computed_at if now is None else now
    if signals.n_current < policy.min_window:
        return Decision(degraded=False, action="skip_small_window", fired=[], state=state,
                        reason=f"window of {signals.n_current} rows < min_window {policy.min_window}: not judged")

    alpha = policy.per_signal_alpha
    lines, fired = [], []
    present = {s.name: s for s in signals.signals}
    for name in policy.signals:
        if name not in present:
            lines.append(f"{name}: not computed")
            continue
        ok, line = _fires(present[name], signals, policy, alpha)
        lines.append(("FIRED " if ok else "") + line)
        fired += [name] if ok else []
    sufficient = [f for f in fired if f in policy.sufficient_signals]
    alarm = len(fired) >= policy.min_signals or bool(sufficient)
    very = [f for f in fired if policy.strong_alpha is not None and present[f].p_value is not None
            and present[f].p_value < policy.strong_alpha]
    strong = alarm and len(very) >= policy.min_signals
    consecutive = state.consecutive + 1 if alarm else 0
    degraded = consecutive >= policy.confirm_windows or strong
    labels = state.labels_since_retrain + signals.n_labels if new_labels is None else new_labels
    windows = state.windows + 1
    divisor = len(policy.signals) if policy.correction == "bonferroni" else 1
    head = (f"{len(fired)} of {len(policy.signals)} signals fired ({', '.join(fired) or 'none'}) at "
            f"{policy.correction} alpha {policy.alpha:g}/{divisor}={alpha:.3g}; window alarms when >= "
            f"{policy.min_signals} fire or one of {list(policy.sufficient_signals)}: "
            f"{'yes' if alarm else 'no'}; {consecutive}/{policy.confirm_windows} consecutive alarming windows"
            + (f"; strong: {', '.join(very)} below {policy.strong_alpha:g}, confirmed in one window" if strong else ""))

    in_cooldown = state.last_retrain_window is not None and (
        windows - state.last_retrain_window <= policy.cooldown_windows
        or (state.last_retrain_at is not None and now - state.last_retrain_at < policy.cooldown_seconds))
    new_state = state.model_copy(update={"windows": windows, "consecutive": consecutive,
                                         "labels_since_retrain": labels})
    if not degraded:
        action, why = ("wait", "alarm not yet confirmed") if alarm else ("none", "no alarm")
    elif in_cooldown:
        action, why = "cooldown", (f"degraded, but within cooldown of the retrain at window "
                                   f"{state.last_retrain_window} "
                                   f"({policy.cooldown_windows} windows / {policy.cooldown_seconds:g} s)")
    elif labels < policy.min_new_labels:
        action, why = "need_labels", (f"degraded, but only {labels} new labels < min_new_labels "
                                      f"{policy.min_new_labels}: label the queued requests")
    else:
        action, why = "retrain", f"degraded and {labels} new labels >= min_new_labels {policy.min_new_labels}"
        new_state = new_state.model_copy(update={"consecutive": 0, "labels_since_retrain": 0,
                                                 "last_retrain_window": windows, "last_retrain_at": now})
    reason = f"{action}: {why}. {head}. " + "; ".join(lines)
    return Decision(degraded=degraded, action=action, reason=reason, fired=fired, state=new_state, alarm=alarm,
                    strong=strong, labels_needed=max(policy.min_new_labels - labels, 0) if action == "need_labels" else 0)
