"""The monitor warms up on its champion before the first window: later cycles are not cold, and
warming up writes nothing."""

from __future__ import annotations


def test_warm_up_loads_the_champion_and_writes_nothing(champion_home, monkeypatch):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.state.audit import AuditLog
    from tuneloop.state.registry import read_champion

    mon = Monitor(champion_home, MonitorConfig(metrics_port=None, evidently_project="tuneloop-test"))
    seconds = mon.warm_up()
    assert seconds > 0
    tag = read_champion(champion_home).tag
    from tuneloop.training.predict import Classifier

    def no_second_load(*args, **kwargs):
        raise AssertionError("the champion was loaded again after the warm-up")

    monkeypatch.setattr(Classifier, "load", no_second_load)
    assert mon.champion_view(tag).classifier is not None  # loaded by the warm-up, cached for the cycles
    audit = AuditLog(champion_home.traffic_db_path)
    assert audit.decisions().empty and audit.get_state("cursor") is None
    assert not any(champion_home.reports_dir.iterdir())
