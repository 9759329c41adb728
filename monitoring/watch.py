"""The post-swap watch: after a promotion the monitor watches the new champion on live traffic and
judges whether it regressed. Pure functions on arrays; :mod:`tuneloop.monitoring.watch_step` reads
the rows, keeps the state and rolls back.

The watch window is the first ``WatchConfig.requests`` requests the new tag answered after its
promotion (or ``requests x search_factor`` requests in all, whichever comes first, so that a read is
bounded when other tags still answer part of the traffic). Signals, each a one-sided test of "the new
champion is worse" with a practical margin and a minimum sample below which it is not tested:

* ``feedback_accuracy`` (classification): accuracy on reviewers' labels of the tag's requests against
  the accuracy the gate measured for it minus ``accuracy_tolerance``: exact binomial test
  (``scipy.stats.binomtest``, H1: p < gate - tolerance), a non-inferiority test with the margin in H0.
  The baseline is the lower of the gate's figure and the previous champion's live figure before the
  swap (:func:`tuneloop.monitoring.watch_step.live_baseline`; the same for ROUGE-L).
* ``feedback_rouge_l`` (generation): per-request ROUGE-L F of the reply against the reviewer's corrected
  reply (:func:`tuneloop.monitoring.gen_quality.row_rouge`) against the gate's ROUGE-L minus
  ``rouge_tolerance``: one-sample t-test (``scipy.stats.ttest_1samp``, H1: mean < gate - tolerance).
  The t-test and not Wilcoxon's signed-rank test: the gate's ROUGE-L is a *mean* of per-pair
  F-measures (:func:`tuneloop.training.gen_metrics.rouge`), and the signed-rank test is about the
  pseudo-median, which differs from the mean for the skewed, bounded ROUGE distribution; bounded scores
  make the mean's t statistic close to normal at the ``min_feedback`` (30) pairs the signal needs.
* ``estimated_accuracy`` (classification): the label-free ATC estimate (Garg et al., ICLR 2022; the
  monitor's default estimator, :mod:`tuneloop.monitoring.performance`): each model's share of
  confidences above its own ATC threshold, the new tag's requests against the previous champion's
  last ``requests`` requests before the swap; one-sided Fisher exact test (``scipy.stats.fisher_exact``)
  and a drop of at least ``max_estimate_drop``.
* ``mean_logprob`` (generation): the label-free confidence of a generation model, its mean token
  log-probability per reply, against the previous champion's; one-sided Mann-Whitney U
  (``scipy.stats.mannwhitneyu``) and a drop of the mean of at least ``max_logprob_drop`` nats.
* ``latency``: the tag's logged latencies against the previous champion's; one-sided Mann-Whitney U
  and a median rise of at least ``max_latency_rise`` (relative) and ``min_latency_rise_ms``.

Error rate is not watched: the traffic store logs answered requests only (a request that failed was
never written), and the service's error counters (``tuneloop_request_errors_total``) carry no model
tag and live in each worker's ``/metrics``, not in the store; a model that fails to load is never
swapped in (``tuneloop_model_swap_failures_total``). The service-wide ``TuneloopServiceErrors`` alert
covers errors.

Multiple testing: Holm's step-down correction (Holm 1979, "A simple sequentially rejective multiple
test procedure", Scand. J. Statist. 6:65-70; ``statsmodels.stats.multitest.multipletests``) over the
signals tested at a look, family-wise level ``alpha``. Repeated looks (one per monitoring cycle):
the Haybittle-Peto rule (Haybittle 1971, Br. J. Radiol. 44:793; Peto et al. 1976, Br. J. Cancer
34:585): an interim look rejects only at ``interim_alpha`` (0.001), the final look at ``alpha``, which
keeps the overall level close to ``alpha`` whatever the number of looks, while a clearly bad model
is rolled back at the first look with enough evidence.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FEEDBACK_ACCURACY, FEEDBACK_ROUGE = "feedback_accuracy", "feedback_rouge_l"
ESTIMATED_ACCURACY, MEAN_LOGPROB, LATENCY = "estimated_accuracy", "mean_logprob", "latency"
WATCHING, KEPT, ROLLED_BACK = "watching", "kept", "rolled_back"  # verdicts
# Chosen defaults (README, "Post-swap watch"):
WATCH_REQUESTS = 200  # requests of the new tag watched after a promotion
MIN_FEEDBACK = 30  # labels before a feedback signal is tested (the monitor's accuracy_drop needs as many)
MIN_ROWS = 30  # requests per side before a label-free or latency signal is tested
FAMILY_ALPHA = 0.05  # family-wise level of the final look (Holm over the signals)
INTERIM_ALPHA = 0.001  # Haybittle-Peto level of every earlier look
SEARCH_FACTOR = 4  # the window closes after requests x this many requests of any tag: reads stay bounded


class WatchConfig(BaseModel):
    """How the monitor watches a newly promoted champion (``MonitorConfig.watch``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Watch every promotion and roll back a significant regression.")
    requests: int = Field(WATCH_REQUESTS, ge=10, le=100_000, description="Requests of the new tag watched.")
    search_factor: int = Field(SEARCH_FACTOR, ge=1, le=20, description="The window also closes after "
                               "requests x search_factor requests of any tag (bounded reads).")
    feedback_grace_seconds: float = Field(0.0, ge=0, le=7 * 86400, description="After the window has its "
                                          "requests, wait this long for reviewers' feedback before the final look.")
    alpha: float = Field(FAMILY_ALPHA, gt=0, lt=0.5, description="Family-wise level of the final look (Holm).")
    interim_alpha: float = Field(INTERIM_ALPHA, gt=0, lt=0.5, description="Level of earlier looks "
                                 "(Haybittle-Peto).")
    min_feedback: int = Field(MIN_FEEDBACK, ge=5, description="Labels (or corrected replies) before the "
                              "feedback signal is tested.")
    min_rows: int = Field(MIN_ROWS, ge=5, description="Requests per side before the label-free and latency "
                          "signals are tested.")
    accuracy_tolerance: float = Field(0.05, ge=0, le=1, description="classification: live accuracy may be this "
                                      "far below the gate's before it counts (the null's margin).")
    rouge_tolerance: float = Field(0.05, ge=0, le=1, description="generation: the same for ROUGE-L.")
    max_estimate_drop: float = Field(0.10, ge=0, le=1, description="classification: drop of the ATC "
                                     "estimate below the previous champion's that matters.")
    max_logprob_drop: float = Field(0.25, ge=0, description="generation: drop of the mean token log-probability "
                                    "(nats) below the previous champion's that matters (e^0.25: perplexity x1.28).")
    max_latency_rise: float = Field(0.5, ge=0, description="Relative rise of the median latency that matters.")
    min_latency_rise_ms: float = Field(10.0, ge=0, description="... and at least this many milliseconds.")

    def level(self, final: bool) -> float:
        """The family-wise level of a look: ``alpha`` at the final look, ``interim_alpha`` before."""
        return self.alpha if final else min(self.interim_alpha, self.alpha)


class WatchSignal(BaseModel):
    """One signal at one look. ``p_value`` is None when the sample is below ``min_n`` (not tested)."""

    name: str
    method: str
    n: int = Field(description="New tag's sample size (labels, corrected replies or requests).")
    value: float | None = Field(None, description="The new tag's figure (accuracy, mean ROUGE-L, ATC share, mean "
                                "log-prob, median latency ms).")
    baseline: float | None = Field(None, description="What it is compared with (the gate's figure or the "
                                   "previous champion's).")
    margin: float = Field(description="Practical margin (same unit as value; latency: relative).")
    min_n: int
    p_value: float | None = None
    adjusted_p: float | None = Field(None, description="Holm-adjusted p-value among the look's tested signals.")
    practical: bool = Field(False, description="The effect reaches the margin.")
    fired: bool = False


class WatchVerdict(BaseModel):
    """One look of a watch."""

    verdict: Literal["watching", "kept", "rolled_back"]
    final: bool = Field(description="The window was complete at this look.")
    served: int = Field(description="Requests of the new tag in the window so far.")
    level: float = Field(description="Family-wise level this look used.")
    signals: list[WatchSignal]
    reason: str


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _untested(name: str, method: str, n: int, min_n: int, margin: float, value=None, baseline=None) -> WatchSignal:
    return WatchSignal(name=name, method=method, n=n, min_n=min_n, margin=margin, value=value, baseline=baseline)


def feedback_accuracy_signal(correct: np.ndarray, gate_accuracy: float | None, cfg: WatchConfig) -> WatchSignal:
    """Accuracy on feedback labels against the gate's, exact binomial (H1: p < gate - tolerance).

    Args:
        correct: 1/True per labelled request of the new tag where its prediction matched, shape (n,).
        gate_accuracy: the challenger's accuracy the gate measured (0..1); None: not tested.
        cfg: the watch settings (``accuracy_tolerance``, ``min_feedback``).
    """
    from scipy.stats import binomtest

    ok = np.asarray(correct, dtype=bool)
    n, method = len(ok), "exact binomial, H1: accuracy < gate - tolerance"
    value = float(ok.mean()) if n else None
    sig = _untested(FEEDBACK_ACCURACY, method, n, cfg.min_feedback, cfg.accuracy_tolerance, value, gate_accuracy)
    if gate_accuracy is None or n < cfg.min_feedback:
        return sig
    null = max(0.0, min(1.0, gate_accuracy - cfg.accuracy_tolerance))
    p = float(binomtest(int(ok.sum()), n, null, alternative="less").pvalue) if null > 0 else 1.0
    return sig.model_copy(update={"p_value": p, "practical": value < null})


def feedback_rouge_signal(rouge: np.ndarray, gate_rouge: float | None, cfg: WatchConfig) -> WatchSignal:
    """Mean ROUGE-L F of replies vs corrected replies against the gate's, one-sample t-test (H1: mean <
    gate - tolerance; see the module docstring for why not Wilcoxon).

    Args:
        rouge: per corrected reply of the new tag, ROUGE-L F-measure 0..1, shape (n,) (no NaN).
        gate_rouge: the challenger's ROUGE-L the gate measured; None: not tested.
        cfg: the watch settings (``rouge_tolerance``, ``min_feedback``).
    """
    from scipy.stats import ttest_1samp

    scores = np.asarray(rouge, dtype=float)
    n, method = len(scores), "one-sample t-test, H1: mean ROUGE-L < gate - tolerance"
    value = float(scores.mean()) if n else None
    sig = _untested(FEEDBACK_ROUGE, method, n, cfg.min_feedback, cfg.rouge_tolerance, value, gate_rouge)
    if gate_rouge is None or n < cfg.min_feedback:
        return sig
    null = gate_rouge - cfg.rouge_tolerance
    if np.ptp(scores) == 0:  # no spread: the t statistic is undefined, the sample mean is exact
        p = 0.0 if value < null else 1.0
    else:
        p = float(ttest_1samp(scores, null, alternative="less").pvalue)
    return sig.model_copy(update={"p_value": p, "practical": value < null})


def estimate_signal(new_above: np.ndarray, previous_above: np.ndarray, cfg: WatchConfig) -> WatchSignal:
    """ATC label-free accuracy estimate, new tag vs previous champion: one-sided Fisher exact test on
    the 2x2 table of (above, not above) x (new, previous), H1: the new share is lower.

    Args:
        new_above, previous_above: 1 where a request's top-1 confidence exceeds its model's ATC
            threshold (:meth:`tuneloop.monitoring.performance.Calibration.above_threshold`), shapes (n,), (m,).
        cfg: the watch settings (``max_estimate_drop``, ``min_rows``).
    """
    from scipy.stats import fisher_exact

    new, prev = np.asarray(new_above, dtype=bool), np.asarray(previous_above, dtype=bool)
    value, baseline = (float(new.mean()) if len(new) else None), (float(prev.mean()) if len(prev) else None)
    sig = _untested(ESTIMATED_ACCURACY, "ATC estimate vs previous champion, one-sided Fisher exact", len(new),
                    cfg.min_rows, cfg.max_estimate_drop, value, baseline)
    if min(len(new), len(prev)) < cfg.min_rows:
        return sig
    table = [[int(new.sum()), int((~new).sum())], [int(prev.sum()), int((~prev).sum())]]
    p = float(fisher_exact(table, alternative="less").pvalue)
    return sig.model_copy(update={"p_value": p, "practical": baseline - value >= cfg.max_estimate_drop})


def logprob_signal(new_logprob: np.ndarray, previous_logprob: np.ndarray, cfg: WatchConfig) -> WatchSignal:
    """Mean token log-probability per reply (nats), new tag vs previous champion: one-sided
    Mann-Whitney U (H1: the new tag's are stochastically lower) and a drop of the mean of at least
    ``max_logprob_drop``.

    Args:
        new_logprob, previous_logprob: per reply, shapes (n,), (m,) (no NaN).
        cfg: the watch settings.
    """
    from scipy.stats import mannwhitneyu

    new, prev = np.asarray(new_logprob, dtype=float), np.asarray(previous_logprob, dtype=float)
    value, baseline = (float(new.mean()) if len(new) else None), (float(prev.mean()) if len(prev) else None)
    sig = _untested(MEAN_LOGPROB, "mean token log-prob vs previous champion, one-sided Mann-Whitney U", len(new),
                    cfg.min_rows, cfg.max_logprob_drop, value, baseline)
    if min(len(new), len(prev)) < cfg.min_rows:
        return sig
    p = float(mannwhitneyu(new, prev, alternative="less").pvalue)
    return sig.model_copy(update={"p_value": p, "practical": baseline - value >= cfg.max_logprob_drop})


def latency_signal(new_ms: np.ndarray, previous_ms: np.ndarray, cfg: WatchConfig) -> WatchSignal:
    """Logged latencies (ms), new tag vs previous champion: one-sided Mann-Whitney U (H1: the new
    tag's are stochastically greater) and a median rise of at least ``max_latency_rise`` (relative)
    and ``min_latency_rise_ms``.

    Args:
        new_ms, previous_ms: per request, shapes (n,), (m,) (no NaN).
        cfg: the watch settings.
    """
    from scipy.stats import mannwhitneyu

    new, prev = np.asarray(new_ms, dtype=float), np.asarray(previous_ms, dtype=float)
    value = float(np.median(new)) if len(new) else None
    baseline = float(np.median(prev)) if len(prev) else None
    sig = _untested(LATENCY, "median latency ms vs previous champion, one-sided Mann-Whitney U", len(new),
                    cfg.min_rows, cfg.max_latency_rise, value, baseline)
    if min(len(new), len(prev)) < cfg.min_rows:
        return sig
    p = float(mannwhitneyu(new, prev, alternative="greater").pvalue)
    rise = value - baseline
    practical = rise >= cfg.min_latency_rise_ms and rise >= cfg.max_latency_rise * baseline
    return sig.model_copy(update={"p_value": p, "practical": bool(practical)})


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order), via ``statsmodels.stats.multitest.multipletests``."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, method="holm")[1]]


def judge(signals: list[WatchSignal], served: int, final: bool, cfg: WatchConfig) -> WatchVerdict:
    """The verdict of one look: Holm over the tested signals at the look's level (module docstring);
    a signal fires when its adjusted p-value is below the level and its effect reaches the margin.

    Args:
        signals: this look's signals (untested ones have ``p_value`` None and never fire).
        served: requests of the new tag in the window so far.
        final: the window is complete (this is the last look).
        cfg: the watch settings.

    Returns:
        ``rolled_back`` when any signal fired, else ``kept`` at the final look and ``watching`` before.
    """
    level = cfg.level(final)
    tested = [i for i, s in enumerate(signals) if s.p_value is not None]
    adjusted = holm([signals[i].p_value for i in tested])
    out = list(signals)
    for i, adj in zip(tested, adjusted):
        out[i] = out[i].model_copy(update={"adjusted_p": adj, "fired": adj < level and out[i].practical})
    fired = [s for s in out if s.fired]
    look = "final" if final else "interim"
    if fired:
        what = "; ".join(f"{s.name} {_fmt(s.value)} vs {_fmt(s.baseline)} (Holm p {s.adjusted_p:.2g})" for s in fired)
        return WatchVerdict(verdict=ROLLED_BACK, final=final, served=served, level=level, signals=out,
                            reason=f"regression after {served} requests ({look} look, level {level:g}): {what}")
    tested_names = ", ".join(signals[i].name for i in tested) or "none"
    if final:
        reason = f"no regression in {served} requests (final look, level {level:g}; tested: {tested_names})"
    else:
        reason = f"watching: {served}/{cfg.requests} requests, no regression yet (tested: {tested_names})"
    return WatchVerdict(verdict=KEPT if final else WATCHING, final=final, served=served, level=level, signals=out,
                        reason=reason)
