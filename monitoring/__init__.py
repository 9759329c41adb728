"""tuneloop.monitoring: drift reports (Evidently), Prometheus gauges, the retrain-gate-promote
loop (APScheduler), the audit table and the end-to-end demo. Importing this package loads nothing.
"""
