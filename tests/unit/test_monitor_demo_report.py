"""The demo report's CBPE figure: estimated accuracy per judged window against the true accuracy of the
same requests (milliseconds, hand-made frames)."""

from __future__ import annotations

import pandas as pd
import pytest

from tuneloop.apps.demo_report import estimation_error


def test_estimation_error_compares_each_window_with_its_requests():
    out = pd.DataFrame({"request_id": list("abcdef"), "predicted": list("xxxxyy"), "label": list("xxyyyy"),
                        "index": range(6), "phase": ["in_distribution"] * 3 + ["drift"] * 3})
    traffic = pd.DataFrame({"seq": range(1, 7), "request_id": list("abcdef")})
    decisions = pd.DataFrame({"window_start_seq": [1, 4, 6], "window_end_seq": [3, 6, 6], "end_index": [2, 5, 5],
                              "end_phase": ["in_distribution", "drift", "drift"],
                              "signals": [{"estimated_accuracy": 0.7}, {"estimated_accuracy": 0.5}, {}]})
    res = estimation_error(decisions, traffic, out)
    assert res["windows"] == 2  # the third window carries no estimate
    assert res["per_window"][0]["true_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert res["by_phase"]["in_distribution"]["mae_points"] == pytest.approx(3.33, abs=0.01)
    assert res["by_phase"]["drift"]["mae_points"] == pytest.approx(16.67, abs=0.01)  # 0.5 vs 2/3 correct
    assert res["mae_points"] == pytest.approx(10.0, abs=0.01)
    assert estimation_error(decisions.assign(signals=[{}] * 3), traffic, out)["mae_points"] is None
