"""The generation demo's pure parts: seeded pools from the Bitext layout and the acceptance checks."""

from __future__ import annotations

import pandas as pd
import pytest


def write_bitext_like(folder):
    rows = []
    for cat, intents in {"ORDER": ["cancel_order", "track_order"], "REFUND": ["get_refund"],
                         "NEWSLETTER": ["newsletter_subscription"]}.items():
        for intent in intents:
            for i in range(12):
                rows.append({"instruction": f"{intent} {i}", "response": f"reply for {intent}.", "intent": intent,
                             "category": cat})
    df = pd.DataFrame(rows)
    folder.mkdir()
    df.to_csv(folder / "train.csv", index=False)
    df.assign(instruction=df["instruction"] + " test").to_csv(folder / "test.csv", index=False)
    return folder


def test_pools_keep_scarce_categories_scarce_and_never_replay_the_holdout(tmp_path):
    from tuneloop.apps.gen_demo import GenDemoConfig, build_pools

    cfg = GenDemoConfig(data=str(write_bitext_like(tmp_path / "data")), scarce_categories=1, scarce_examples=1,
                        per_intent=5, holdout_per_intent=2)
    pools = build_pools(cfg)
    scarce = pools.scarce_categories
    assert len(scarce) == 1
    counts = pools.train.groupby("intent").size()
    for intent, n in counts.items():
        category = pools.train.loc[pools.train["intent"] == intent, "category"].iloc[0]
        assert n == (1 if category in scarce else 5)
    assert (pools.holdout.groupby("intent").size() == 2).all()
    replayed = set(pools.replay_known["instruction"]) | set(pools.replay_scarce["instruction"])
    assert not replayed & set(pools.holdout["instruction"])  # no evaluation text is replayed
    assert not set(pools.replay_scarce["instruction"]) & set(pools.train["instruction"])  # nor trained on
    assert set(pools.replay_scarce["category"]) == set(scarce)
    assert build_pools(cfg).train.equals(pools.train)  # seeded


def test_checks_follow_the_issue_targets():
    from tuneloop.apps.gen_demo_report import gen_checks

    def report(delay, after, alarms=0, failed=0, wall=900.0, promoted=True):
        return {"phases": [{"name": "in_distribution", "drift_alarms": alarms, "failed_requests": failed, "live_rouge_l": 0.4},
                           {"name": "drift", "drift_alarms": 1, "failed_requests": 0, "live_rouge_l": 0.30},
                           {"name": "after_retrain", "drift_alarms": 0, "failed_requests": 0, "live_rouge_l": after}],
                "detection_delay_requests": delay, "retrain": {"promoted": promoted}, "swap": {"failed_requests": 0},
                "wall_seconds": wall}

    assert all(gen_checks(report(150, 0.36)).values())
    failed = gen_checks(report(250, 0.34, alarms=1, failed=2, wall=1300, promoted=False))
    assert not any(failed.values())
    assert gen_checks(report(None, None))["detected_within_200_requests"] is False


def test_bad_data_fails_before_any_run_folder(tmp_path):
    from tuneloop.apps.gen_demo import GenDemoConfig, build_pools

    (tmp_path / "only").mkdir()
    pd.DataFrame({"instruction": ["a"], "response": ["b"], "intent": ["i"], "category": ["C"]}).to_csv(
        tmp_path / "only" / "train.csv", index=False)
    with pytest.raises(ValueError, match="train and a test split"):
        build_pools(GenDemoConfig(data=str(tmp_path / "only")))
