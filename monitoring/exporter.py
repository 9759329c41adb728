"""The monitor's Prometheus metrics, on its own registry and its own ``/metrics`` port (127.0.0.1).

The values are plain numbers held by :class:`MonitorMetrics` (small thread-safe gauges and counters of
:mod:`tuneloop.monitoring.metric_values`), read by a custom collector (prometheus_client's public ``Collector`` / ``*MetricFamily`` API): they
never go to PROMETHEUS_MULTIPROC_DIR files. Counters export ``<name>_total`` (no ``_created``).

Names follow Prometheus conventions (base units, ``_total`` counters, bounded label values: signal,
descriptor, action, outcome and intent names, never a request). Per window:

    tuneloop_monitor_drift_score{signal}            the signal's value (ROC AUC, distance, p-value, drop)
    tuneloop_monitor_drift_threshold{signal}        its cutoff on that value
    tuneloop_monitor_drift_p_value{signal}          its p-value (NaN when not computed)
    tuneloop_monitor_drift_fired{signal}            1 when it fired under the policy in the last window
    tuneloop_monitor_policy_alpha                   per-signal level (Bonferroni-corrected)
    tuneloop_monitor_policy_strong_alpha            level of a self-confirming window
    tuneloop_monitor_descriptor_mean{descriptor,sample}  text length / OOV % / non-letter %, reference|current
    tuneloop_monitor_descriptor_p_value{descriptor} K-S p-value of each descriptor
    tuneloop_monitor_label_js_distance              Jensen-Shannon distance of predicted-label shares
    tuneloop_monitor_confidence_mean{sample}        mean top-1 confidence, reference|current
    tuneloop_monitor_window_rows, _window_labels    rows and labelled rows in the last judged window
    tuneloop_monitor_feedback_accuracy              accuracy on its feedback (NaN without labels)
    tuneloop_monitor_feedback_accuracy_ci{bound}    Wilson 95 % interval, low|high
    tuneloop_monitor_feedback_macro_f1              macro F1 on its feedback
    tuneloop_monitor_reference_accuracy             accuracy of the reference sample's labelled rows
    tuneloop_monitor_estimated_accuracy             label-free estimate (ATC by default) from calibrated confidences
    tuneloop_monitor_estimated_accuracy_sd          its sampling sd for the window's size
    tuneloop_monitor_estimated_accuracy_reference   the same estimate on the reference sample
    tuneloop_monitor_estimated_accuracy_by_method{method}  every estimator: atc, cbpe
    tuneloop_monitor_intent_recall{intent}          feedback recall of the intents whose share moved most
    tuneloop_monitor_intent_share{intent,sample}    their share of labelled traffic, reference|current
    tuneloop_monitor_window_alarm                   1 when the window alarmed (before confirmation)
    tuneloop_monitor_consecutive_alarms             alarming windows in a row
    tuneloop_monitor_degraded                       1 when the policy says the model has degraded
    tuneloop_monitor_need_labels                    1 when a retrain is warranted but labels are missing
    tuneloop_monitor_labels_needed                  how many are missing
    tuneloop_monitor_labels_since_retrain           new labels available to the next retrain
    tuneloop_monitor_label_queue_size               requests in the labelling queue
    tuneloop_monitor_decisions_total{action}        decisions by action
Per window of a generation champion (drift_score, _threshold, _p_value, _fired carry its signals: text_drift,
embedding_drift, reply_drift, confidence_drift, rouge_drop, bad_rating_rise; descriptor_mean and
descriptor_p_value its reply descriptors reply_length, stop_rate, placeholder_rate; confidence_mean the
geometric-mean token probability):
    tuneloop_monitor_generation_rouge_l{sample}     mean ROUGE-L F of replies vs corrected replies, reference|current
    tuneloop_monitor_generation_bad_rating_share{sample}  share of bad ratings, baseline (reference)|current
    tuneloop_monitor_generation_stop_rate{sample}   share of replies that stopped on their own
    tuneloop_monitor_generation_mean_logprob{sample}  mean token log-probability of the replies (nats)
    tuneloop_monitor_generation_reply_length_characters{sample}  mean reply length
    tuneloop_monitor_generation_feedback_rows{kind} window rows with a corrected reply | a rating
Always:
    tuneloop_monitor_champion_info{tag}             1 for the tag the monitor judges against
    tuneloop_monitor_retraining                     1 while a challenger trains
    tuneloop_monitor_retrains_total{outcome}        retrains: promoted / rejected / failed
    tuneloop_monitor_rollbacks_total                champions rolled back by the post-swap watch (tuneloop.monitoring.watch)
    tuneloop_monitor_last_check_timestamp_seconds   Unix time of the last check (a skipped small window too)
    tuneloop_monitor_last_cycle_timestamp_seconds   Unix time of the last judged window
    tuneloop_monitor_cycle_duration_seconds         duration of the last judged cycle
    tuneloop_monitor_interval_seconds               the configured check interval
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from tuneloop.monitoring.metric_values import Counter, Family, Gauge, MetricsCollector

ACTIONS = ("none", "wait", "retrain", "need_labels", "cooldown")  # policy actions of judged windows
# WindowReport.figures name -> (gauge name after tuneloop_monitor_, help); each labelled by sample
FIGURE_GAUGES = {
    "rouge_l": ("generation_rouge_l", "Mean ROUGE-L F-measure of replies vs corrected replies (reference: vs "
                "reference replies)"),
    "bad_rating_share": ("generation_bad_rating_share", "Share of bad ratings (reference: the baseline)"),
    "stop_rate": ("generation_stop_rate", "Share of replies that stopped before their token budget"),
    "mean_logprob": ("generation_mean_logprob", "Mean token log-probability of the replies (nats)"),
    "reply_length": ("generation_reply_length_characters", "Mean reply length in characters"),
}
DESCRIPTOR_SIGNALS = ("descriptor_drift", "reply_drift")  # signals whose details are per-descriptor results
FEEDBACK_KINDS = {"rouge_drop": "corrected", "bad_rating_rise": "rated"}  # signal -> feedback rows it counts
OUTCOMES = ("promoted", "rejected", "failed")


def _num(value) -> float:
    return math.nan if value is None else float(value)



class MonitorMetrics:
    """The gauges and counters, served by a collector on a registry of their own (no clashes across tests).

    Values are plain Python numbers held by this object, never prometheus_client's value classes: the
    monitor serves its own registry from its own process, so its values must not go to
    PROMETHEUS_MULTIPROC_DIR files (set in a BentoML worker, a test run or a user's shell), where a
    second MonitorMetrics in the same process would read the first's.
    """

    def __init__(self) -> None:
        families: list[Family] = []

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            families.append(Gauge(f"tuneloop_monitor_{name}", doc, labels))
            return families[-1]

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            families.append(Counter(f"tuneloop_monitor_{name}", doc, labels))
            return families[-1]

        self.score = gauge("drift_score", "Drift signal value", ("signal",))
        self.threshold = gauge("drift_threshold", "Drift signal cutoff on its value", ("signal",))
        self.p_value = gauge("drift_p_value", "Drift signal p-value", ("signal",))
        self.fired = gauge("drift_fired", "1 when the signal fired under the policy", ("signal",))
        self.alpha = gauge("policy_alpha", "Per-signal significance level (corrected)")
        self.strong_alpha = gauge("policy_strong_alpha", "Level below which two signals confirm a window alone")
        self.descriptor_mean = gauge("descriptor_mean", "Mean text descriptor", ("descriptor", "sample"))
        self.descriptor_p = gauge("descriptor_p_value", "K-S p-value of a text descriptor", ("descriptor",))
        self.js = gauge("label_js_distance", "Jensen-Shannon distance of predicted-label shares")
        self.confidence_mean = gauge("confidence_mean", "Mean top-1 confidence", ("sample",))
        self.window_rows = gauge("window_rows", "Rows in the last judged window")
        self.window_labels = gauge("window_labels", "Labelled rows in the last window")
        self.accuracy = gauge("feedback_accuracy", "Accuracy on window feedback")
        self.accuracy_ci = gauge("feedback_accuracy_ci", "Wilson 95 % interval of the feedback accuracy", ("bound",))
        self.macro_f1 = gauge("feedback_macro_f1", "Macro F1 on window feedback")
        self.reference_accuracy = gauge("reference_accuracy", "Accuracy of the labelled reference rows")
        self.estimated = gauge("estimated_accuracy", "Label-free estimated accuracy (calibrated confidences)")
        self.estimated_by = gauge("estimated_accuracy_by_method", "Label-free accuracy estimate per method",
                                  ("method",))
        self.estimated_sd = gauge("estimated_accuracy_sd", "Sampling sd of the estimated accuracy")
        self.estimated_ref = gauge("estimated_accuracy_reference", "Estimated accuracy of the reference sample")
        self.intent_recall = gauge("intent_recall", "Feedback recall of the most-moved intents", ("intent",))
        self.intent_share = gauge("intent_share", "Share of labelled traffic of the most-moved intents",
                                  ("intent", "sample"))
        self.figures = {name: gauge(metric, doc, ("sample",)) for name, (metric, doc) in FIGURE_GAUGES.items()}
        self.feedback_rows = gauge("generation_feedback_rows", "Window rows with a corrected reply or a rating",
                                   ("kind",))
        self.alarm = gauge("window_alarm", "1 when the last window alarmed")
        self.consecutive = gauge("consecutive_alarms", "Alarming windows in a row")
        self.degraded = gauge("degraded", "1 when the model is judged degraded")
        self.need_labels = gauge("need_labels", "1 when a retrain is warranted but labels are missing")
        self.labels_needed = gauge("labels_needed", "Labels missing for a retrain")
        self.labels_since = gauge("labels_since_retrain", "New labels available to the next retrain")
        self.queue_size = gauge("label_queue_size", "Requests in the labelling queue")
        self.champion = gauge("champion_info", "1 for the champion tag the monitor judges against", ("tag",))
        self.retraining = gauge("retraining", "1 while a challenger trains")
        self.last_check = gauge("last_check_timestamp_seconds", "Unix time of the last check")
        self.last_cycle = gauge("last_cycle_timestamp_seconds", "Unix time of the last judged window")
        self.cycle_seconds = gauge("cycle_duration_seconds", "Duration of the last judged cycle")
        self.interval = gauge("interval_seconds", "Configured seconds between checks")
        self.decisions = counter("decisions", "Monitor decisions", ("action",))
        self.retrains = counter("retrains", "Retrains by outcome", ("outcome",))
        self.rollbacks = counter("rollbacks", "Champions rolled back by the post-swap watch", ())
        for action in ACTIONS:  # series exist from the start: dashboards and rate() see zeros, not gaps
            self.decisions.labels(action)
        for outcome in OUTCOMES:
            self.retrains.labels(outcome)
        self.retraining.set(0)
        self.registry = CollectorRegistry()
        self.registry.register(MetricsCollector(families))

    def set_champion(self, tag: str) -> None:
        """Mark ``tag`` as the champion (older tags are dropped)."""
        self.champion.clear()
        self.champion.labels(tag).set(1)

    def observe_window(self, report, decision, policy=None) -> None:
        """Set the per-window gauges from a ``WindowReport``, its ``Decision`` and the ``DriftPolicy``."""
        for sig in report.signals:
            self.score.labels(sig.name).set(_num(sig.value))
            self.threshold.labels(sig.name).set(_num(sig.threshold))
            self.p_value.labels(sig.name).set(_num(sig.p_value))
            self.fired.labels(sig.name).set(1.0 if sig.name in decision.fired else 0.0)
            if sig.name in FEEDBACK_KINDS:
                self.feedback_rows.labels(FEEDBACK_KINDS[sig.name]).set(_num(sig.details.get("n_labels")))
            if sig.name in DESCRIPTOR_SIGNALS:
                for name, d in sig.details.items():
                    self.descriptor_p.labels(name).set(_num(d["p_value"]))
                    self.descriptor_mean.labels(name, "reference").set(_num(d["reference_mean"]))
                    self.descriptor_mean.labels(name, "current").set(_num(d["current_mean"]))
            elif sig.name == "label_drift":
                self.js.set(_num(sig.details.get("js_distance")))
            elif sig.name == "confidence_drift":
                self.confidence_mean.labels("reference").set(_num(sig.details.get("reference_mean")))
                self.confidence_mean.labels("current").set(_num(sig.details.get("current_mean")))
        if policy is not None:
            self.alpha.set(policy.per_signal_alpha)
            self.strong_alpha.set(_num(policy.strong_alpha))
        self.window_rows.set(report.n_current)
        self.window_labels.set(report.n_labels)
        self.accuracy.set(_num(report.accuracy))
        low, high = report.accuracy_ci or (None, None)
        self.accuracy_ci.labels("low").set(_num(low))
        self.accuracy_ci.labels("high").set(_num(high))
        self.macro_f1.set(_num(report.macro_f1))
        self.reference_accuracy.set(_num(report.reference_accuracy))
        self.estimated.set(_num(report.estimated_accuracy))
        self.estimated_sd.set(_num(report.estimated_accuracy_sd))
        self.estimated_ref.set(_num(report.reference_estimated_accuracy))
        for method, value in report.estimates.items():
            self.estimated_by.labels(method).set(_num(value))
        for name, by_sample in report.figures.items():
            if name in self.figures:
                for sample, value in by_sample.items():
                    self.figures[name].labels(sample).set(_num(value))
        self.intent_recall.clear()
        self.intent_share.clear()
        for item in report.intents:
            self.intent_recall.labels(item["intent"]).set(_num(item["window_recall"]))
            self.intent_share.labels(item["intent"], "reference").set(_num(item["reference_share"]))
            self.intent_share.labels(item["intent"], "current").set(_num(item["window_share"]))
        self.alarm.set(1.0 if decision.alarm else 0.0)
        self.consecutive.set(decision.state.consecutive)
        self.degraded.set(1.0 if decision.degraded else 0.0)
        self.need_labels.set(1.0 if decision.action == "need_labels" else 0.0)
        self.labels_needed.set(decision.labels_needed)
        self.labels_since.set(decision.state.labels_since_retrain)
        self.decisions.labels(decision.action).inc()

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the ``/metrics`` HTTP server in a thread; returns ``(server, thread)``."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)
