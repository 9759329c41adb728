"""The monitor's Prometheus gauges, on its own registry and its own ``/metrics`` port (127.0.0.1).

Names follow Prometheus conventions (base units, ``_total`` counters, no per-request labels):

    tuneloop_monitor_drift_score{signal}       the signal's value (ROC AUC, p-value, accuracy drop)
    tuneloop_monitor_drift_threshold{signal}   its cutoff
    tuneloop_monitor_drift_p_value{signal}     its p-value (NaN when not computed)
    tuneloop_monitor_drift_fired{signal}       1 when it fired in the last window
    tuneloop_monitor_window_rows               rows in the last judged window
    tuneloop_monitor_window_labels             labelled rows in it
    tuneloop_monitor_feedback_accuracy         accuracy on its feedback (NaN without labels)
    tuneloop_monitor_feedback_macro_f1         macro F1 on its feedback
    tuneloop_monitor_degraded                  1 when the policy says the model has degraded
    tuneloop_monitor_retraining                1 while a challenger trains
    tuneloop_monitor_decisions_total{action}   decisions by action
    tuneloop_monitor_retrains_total{outcome}   retrains: promoted / rejected / failed
    tuneloop_monitor_last_cycle_timestamp_seconds  Unix time of the last finished cycle
    tuneloop_monitor_cycle_duration_seconds    duration of the last cycle
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge


class MonitorMetrics:
    """The gauges and counters, registered on a private registry (no clashes across tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.score = Gauge("tuneloop_monitor_drift_score", "Drift signal value", ["signal"], registry=r)
        self.threshold = Gauge("tuneloop_monitor_drift_threshold", "Drift signal cutoff", ["signal"], registry=r)
        self.p_value = Gauge("tuneloop_monitor_drift_p_value", "Drift signal p-value", ["signal"], registry=r)
        self.fired = Gauge("tuneloop_monitor_drift_fired", "1 when the signal fired", ["signal"], registry=r)
        self.window_rows = Gauge("tuneloop_monitor_window_rows", "Rows in the last judged window", registry=r)
        self.window_labels = Gauge("tuneloop_monitor_window_labels", "Labelled rows in the last window", registry=r)
        self.accuracy = Gauge("tuneloop_monitor_feedback_accuracy", "Accuracy on window feedback", registry=r)
        self.macro_f1 = Gauge("tuneloop_monitor_feedback_macro_f1", "Macro F1 on window feedback", registry=r)
        self.degraded = Gauge("tuneloop_monitor_degraded", "1 when the model is judged degraded", registry=r)
        self.retraining = Gauge("tuneloop_monitor_retraining", "1 while a challenger trains", registry=r)
        self.decisions = Counter("tuneloop_monitor_decisions", "Monitor decisions", ["action"], registry=r)
        self.retrains = Counter("tuneloop_monitor_retrains", "Retrains by outcome", ["outcome"], registry=r)
        self.last_cycle = Gauge("tuneloop_monitor_last_cycle_timestamp_seconds", "End of the last cycle", registry=r)
        self.cycle_seconds = Gauge("tuneloop_monitor_cycle_duration_seconds", "Duration of the last cycle", registry=r)

    def observe_window(self, report, decision) -> None:
        """Set the gauges from a ``WindowReport`` and its ``Decision``."""
        nan = math.nan
        for sig in report.signals:
            self.score.labels(sig.name).set(nan if sig.value is None else sig.value)
            self.threshold.labels(sig.name).set(sig.threshold)
            self.p_value.labels(sig.name).set(nan if sig.p_value is None else sig.p_value)
            self.fired.labels(sig.name).set(1.0 if sig.name in decision.fired else 0.0)
        self.window_rows.set(report.n_current)
        self.window_labels.set(report.n_labels)
        self.accuracy.set(nan if report.accuracy is None else report.accuracy)
        self.macro_f1.set(nan if report.macro_f1 is None else report.macro_f1)
        self.degraded.set(1.0 if decision.degraded else 0.0)
        self.decisions.labels(decision.action).inc()

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the ``/metrics`` HTTP server in a thread; returns ``(server, thread)``."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)
