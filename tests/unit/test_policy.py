"""The retrain decision on hand-made WindowReports (no Evidently, milliseconds). The reports carry
four of the six signals; the two missing ones count as "not computed" (and in the Bonferroni
divisor, which is the policy's number of signals)."""

from __future__ import annotations

import pytest

from tuneloop.monitoring.drift import ACCURACY, CONFIDENCE, LABEL, TEXT, SignalResult, WindowReport
from tuneloop.monitoring.policy import DriftPolicy, PolicyState, decide

POLICY = DriftPolicy(min_window=50, min_new_labels=40, cooldown_windows=2, confirm_windows=2)  # alpha 0.05/6


def window(p: dict[str, float] | None = None, n: int = 150, n_labels: int = 0, accuracy: float | None = None,
           at: float = 1000.0) -> WindowReport:
    """A report whose signals have the given p-values (1.0 where not given)."""
    p = p or {}
    drop = None if accuracy is None else 0.9 - accuracy
    signals = [
        SignalResult(name=TEXT, method="domain classifier ROC AUC (abs_text_content_drift)",
                     value=0.5 + (p.get(TEXT, 1) < 0.01) * 0.2,
                     threshold=0.587, fired=False, p_value=p.get(TEXT, 1.0)),
        SignalResult(name=LABEL, method="permutation chi-square p-value", value=p.get(LABEL, 1.0), threshold=0.0125,
                     fired=False, p_value=p.get(LABEL, 1.0)),
        SignalResult(name=CONFIDENCE, method="K-S p-value", value=p.get(CONFIDENCE, 1.0), threshold=0.0125,
                     fired=False, p_value=p.get(CONFIDENCE, 1.0)),
        SignalResult(name=ACCURACY, method="reference accuracy - feedback accuracy", value=drop, threshold=0.1,
                     fired=False, p_value=None if accuracy is None else p.get(ACCURACY, 1.0)),
    ]
    return WindowReport(signals=signals, n_current=n, n_reference=1000, n_labels=n_labels, accuracy=accuracy,
                        macro_f1=accuracy, reference_accuracy=0.9, computed_at=at, seconds=0.1)


SHIFT = {TEXT: 0.004, CONFIDENCE: 0.002}  # two signals below 0.05/6, not below strong_alpha 1e-4
STRONG = {TEXT: 1e-5, CONFIDENCE: 1e-9}  # two signals below strong_alpha: one window confirms itself


def run(reports, policy=POLICY, state=None):
    state = state or PolicyState()
    out = []
    for r in reports:
        d = decide(r, policy, state)
        state = d.state
        out.append(d)
    return out


def test_small_window_is_skipped_and_state_untouched():
    state = PolicyState(consecutive=1)
    d = decide(window(SHIFT, n=49), POLICY, state)
    assert d.action == "skip_small_window" and not d.degraded and d.state == state
    assert "49 rows < min_window 50" in d.reason


def test_quiet_windows_do_nothing():
    ds = run([window() for _ in range(5)])
    assert [d.action for d in ds] == ["none"] * 5 and not any(d.degraded for d in ds)
    assert ds[-1].state.windows == 5 and ds[-1].state.consecutive == 0


def test_one_signal_alone_does_not_alarm():
    ds = run([window({LABEL: 0.001}) for _ in range(4)])
    assert [d.action for d in ds] == ["none"] * 4
    assert ds[0].fired == [LABEL]


def test_bonferroni_correction_applies():
    # 0.02 < 0.05 but > 0.05 / 6: fires without correction only
    two = {TEXT: 0.02, CONFIDENCE: 0.02}
    assert run([window(two)])[0].fired == []
    assert run([window(two)], DriftPolicy(correction="none"))[0].fired == [TEXT, CONFIDENCE]


def test_shift_is_confirmed_over_consecutive_windows():
    ds = run([window(SHIFT, n_labels=30), window(SHIFT, n_labels=30)])
    assert [d.action for d in ds] == ["wait", "retrain"]
    assert [d.degraded for d in ds] == [False, True]
    # an alarm broken by a quiet window starts over
    ds = run([window(SHIFT, n_labels=30), window(), window(SHIFT, n_labels=30)])
    assert [d.action for d in ds] == ["wait", "none", "wait"]


def test_strong_window_confirms_itself_but_one_strong_signal_does_not():
    ds = run([window(n_labels=20), window(STRONG, n_labels=30)])
    assert [d.action for d in ds] == ["none", "retrain"] and ds[-1].degraded and ds[-1].strong
    assert "strong: text_drift, confidence_drift below 0.0001, confirmed in one window" in ds[-1].reason
    one = run([window({TEXT: 1e-6, CONFIDENCE: 0.004}, n_labels=30)])[0]  # alarms, only one very small p
    assert one.alarm and not one.strong and one.action == "wait"
    off = run([window(STRONG, n_labels=30)], POLICY.model_copy(update={"strong_alpha": None}))[0]
    assert off.action == "wait" and not off.strong


def test_need_labels_when_degraded_without_enough_labels():
    ds = run([window(SHIFT, n_labels=5), window(SHIFT, n_labels=5)])
    assert ds[-1].degraded and ds[-1].action == "need_labels"
    assert "10 new labels < min_new_labels 40" in ds[-1].reason and ds[-1].labels_needed == 30
    # labels arriving later (counted by the caller) unlock the retrain
    d = decide(window(SHIFT), POLICY, ds[-1].state, new_labels=120)
    assert d.action == "retrain"


def test_retrain_when_degraded_with_enough_labels_then_cooldown():
    ds = run([window(SHIFT, n_labels=25)] * 2 + [window(SHIFT, n_labels=25)] * 5)
    assert [d.action for d in ds] == ["wait", "retrain", "wait", "cooldown", "retrain", "wait", "cooldown"]
    assert ds[1].state.last_retrain_window == 2 and ds[1].state.labels_since_retrain == 0
    assert ds[1].state.consecutive == 0


def test_cooldown_in_seconds():
    policy = POLICY.model_copy(update={"cooldown_windows": 0, "cooldown_seconds": 600})
    ds = run([window(SHIFT, n_labels=50, at=t) for t in (0, 60, 120, 180)], policy)
    assert [d.action for d in ds] == ["wait", "retrain", "wait", "cooldown"]
    d = decide(window(SHIFT, n_labels=50, at=60 + 600), policy, ds[-1].state)
    assert d.action == "retrain"


def test_accuracy_drop_alone_alarms_only_with_enough_labels():
    bad = {ACCURACY: 1e-6}
    few = run([window(bad, n_labels=10, accuracy=0.5)] * 2)
    assert few[-1].action == "none" and few[-1].fired == []
    many = run([window(bad, n_labels=60, accuracy=0.5)] * 2)
    assert many[-1].fired == [ACCURACY] and many[-1].action == "retrain"
    small_drop = run([window(bad, n_labels=60, accuracy=0.85)] * 2)  # significant but drop 0.05 < 0.10
    assert small_drop[-1].fired == []


def test_reason_names_fired_signals_with_values_and_thresholds():
    d = run([window({TEXT: 1e-4, CONFIDENCE: 3e-9, ACCURACY: 1e-6}, n_labels=60, accuracy=0.55)])[0]
    assert d.fired == [TEXT, CONFIDENCE, ACCURACY]
    assert "FIRED text_drift: domain classifier ROC AUC 0.700, p=0.0001 vs < 0.00833" in d.reason
    assert "FIRED confidence_drift: K-S p-value 3e-09 vs < 0.00833" in d.reason
    assert "FIRED accuracy_drop: 0.900 -> 0.550 on 60 labels (drop 0.350 vs >= 0.100" in d.reason
    assert "; label_drift: permutation chi-square p-value 1 vs < 0.00833" in d.reason
    assert "3 of 6 signals fired" in d.reason and "bonferroni alpha 0.05/6=0.00833" in d.reason
    assert "embedding_drift: not computed" in d.reason  # the hand-made report has four signals


def test_policy_validation_and_drift_config():
    with pytest.raises(ValueError, match="choose a non-empty subset"):
        DriftPolicy(signals=("nope",))
    with pytest.raises(ValueError, match="min_signals"):
        DriftPolicy(signals=(TEXT,), sufficient_signals=(), min_signals=2)
    p = DriftPolicy(signals=(TEXT, LABEL, CONFIDENCE), sufficient_signals=())
    assert p.per_signal_alpha == pytest.approx(0.05 / 3)
    assert p.drift_config().alpha == pytest.approx(0.05 / 3)
    ds = run([window(SHIFT, n_labels=50)] * 2, p)
    assert ds[-1].action == "retrain"
