"""The new signals' statistics on synthetic data (seconds): embedding tests (calibrated, powerful, and
the same statistic as Evidently's methods), text descriptors (same numbers as Evidently's),
Jensen-Shannon distance, CBPE calibration and estimation, feedback performance with intervals,
the labelling queue, the champion's embeddings, and the report-free path agreeing with the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitoring.drift import DESCRIPTORS, EMBEDDING, DriftConfig, compute_signals
from tuneloop.monitoring.drift_stats import (
    embedding_statistic,
    embedding_test,
    js_distance,
    oov_share,
    text_descriptors,
)
from tuneloop.monitoring.label_queue import rank_for_labelling, read_queue, write_queue
from tuneloop.monitoring.performance import (
    estimate_accuracy,
    feedback_performance,
    fit_calibration,
    load_calibration,
    wilson_interval,
)

VOCAB = {"my", "card", "has", "not", "arrived", "yet", "where", "is", "top", "up", "failed"}


def _emb(rng, n, shift=0.0, d=16):
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    x[:, 0] += shift
    return x


@pytest.mark.parametrize("method", ["distance", "mmd", "model"])
def test_embedding_tests_are_calibrated_and_detect_a_shift(method):
    rng = np.random.default_rng(0)
    ref = _emb(rng, 300)
    null_p = [embedding_test(ref, _emb(rng, 60), method, n_permutations=200, seed=s)[1] for s in range(40)]
    assert np.mean(np.array(null_p) < 0.05) <= 0.15, null_p  # ~5 % expected; 40 draws
    stat, p, cut = embedding_test(ref, _emb(rng, 60, shift=1.0), method, n_permutations=200)
    assert p < 0.01 and stat > cut


def test_embedding_statistic_is_the_tests_statistic_and_bad_input_is_rejected():
    """(That the statistics equal Evidently's own methods: tests/test_evidently_bridge.py.)"""
    rng = np.random.default_rng(1)
    ref, cur = _emb(rng, 200), _emb(rng, 80, shift=0.3)
    for name in ("distance", "mmd", "model"):
        assert embedding_statistic(ref, cur, name) == embedding_test(ref, cur, name, n_permutations=100)[0], name
    with pytest.raises(ValueError, match="equal widths"):
        embedding_test(ref, cur[:, :3])
    with pytest.raises(ValueError, match="unknown embedding method"):
        embedding_statistic(ref, cur, "ratio")


def test_descriptors_count_words_the_tokenizer_must_split():
    d = text_descriptors(["my card has not arrived yet", "my crad hsa nto arived", "top-up failed!!", ""], VOCAB)
    assert list(d["oov_share"]) == [0.0, 80.0, 0.0, 0.0]  # "top-up" is the words top, up
    assert list(d["text_length"]) == [27, 22, 15, 0]
    assert d["non_letter_share"][2] == pytest.approx(100 * 3 / 15)
    assert oov_share(["Where IS my card"], VOCAB)[0] == 0.0  # lower-cased, as the uncased tokenizer does


def test_js_distance():
    assert js_distance(["a", "b"] * 5, ["b", "a"] * 5) == 0.0
    assert js_distance(["a"] * 5, ["b"] * 5) == pytest.approx(1.0)


def test_calibration_maps_confidence_to_accuracy_and_cbpe_estimates_it():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.3, 1.0, 5000)
    correct = rng.random(5000) < conf ** 2  # an over-confident model: accuracy conf^2
    cal = fit_calibration(conf, correct, "synthetic")
    assert cal(np.array([0.5, 0.9])) == pytest.approx([0.25, 0.81], abs=0.05)
    window = rng.uniform(0.3, 0.7, 2000)  # a shifted window of low confidences
    est, sd = estimate_accuracy(cal, window, "cbpe")
    assert est == pytest.approx(np.mean(window ** 2), abs=0.02) and 0 < sd < 0.02
    assert window.mean() - est > 0.1  # the raw mean confidence would overestimate
    assert np.mean(conf < cal.atc_threshold) == pytest.approx(1 - correct.mean(), abs=1e-3)  # ATC threshold
    atc, atc_sd = estimate_accuracy(cal, window, "atc")
    assert atc == np.mean(window > cal.atc_threshold) and 0 < atc_sd < 0.02
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_accuracy(cal, window, "nope")
    with pytest.raises(ValueError, match=">= 20"):
        fit_calibration(conf[:5], correct[:5])


def test_load_calibration_prefers_the_saved_validation_outputs(tmp_path):
    rows = pd.DataFrame({"label": ["a"] * 40, "confidence": np.linspace(0.5, 1, 40),
                         "true_label": ["a"] * 30 + ["b"] * 10})
    assert load_calibration(tmp_path) is None
    assert load_calibration(tmp_path, rows).source == "labelled reference rows"
    rows.to_json(tmp_path / "calibration.jsonl", orient="records", lines=True)
    cal = load_calibration(tmp_path, rows.head(0))
    assert cal.source.startswith("validation split") and cal.n == 40 and cal.accuracy == 0.75


def test_wilson_interval_and_feedback_performance():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.786, abs=0.002) and hi == pytest.approx(0.957, abs=0.002)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    ref = pd.DataFrame({"label": ["a"] * 50 + ["b"] * 50, "true_label": ["a"] * 50 + ["b"] * 50})
    win = pd.DataFrame({"label": ["a"] * 12 + ["a"] * 6 + ["b"] * 2 + ["b"] * 5,
                        "true_label": ["a"] * 12 + ["c"] * 6 + ["b"] * 2 + [None] * 5})
    perf = feedback_performance(win, ref, top_intents=2)
    assert perf.n_labels == 20 and perf.accuracy == 0.7 and perf.accuracy_ci[0] < 0.7 < perf.accuracy_ci[1]
    assert [i["intent"] for i in perf.intents] == ["b", "c"]  # b: 50 % -> 10 % of labels; c: 0 % -> 30 %
    assert perf.intents[1] == {"intent": "c", "reference_share": 0.0, "window_share": 0.3, "reference_recall": None,
                               "window_recall": 0.0, "n": 6}
    assert feedback_performance(win.assign(true_label=None)).accuracy is None


def test_label_queue_ranks_uncertain_and_novel_unlabelled_requests(tmp_path):
    win = pd.DataFrame({"request_id": list("abcde"), "text": list("vwxyz"), "label": ["l"] * 5,
                        "confidence": [0.9, 0.2, 0.5, 0.95, 0.3], "true_label": [None, None, None, None, "l"]})
    queue = rank_for_labelling(win, np.array([0.6, 0.1, 0.8, 0.0, 1.0]), size=3)
    assert list(queue["request_id"]) == ["c", "b", "a"]  # e is labelled already; d is confident and familiar
    assert list(rank_for_labelling(win, None, size=2)["request_id"]) == ["b", "c"]
    write_queue(tmp_path / "q.json", queue, "m:1", "1-5")
    saved = read_queue(tmp_path / "q.json")
    assert saved["champion"] == "m:1" and [i["request_id"] for i in saved["items"]] == ["c", "b", "a"]
    assert read_queue(tmp_path / "missing.json") == {"items": []}


def test_champion_embeddings_are_normalised_mean_pooled_states(tmp_path):
    from conftest import write_tiny_model

    from tuneloop.monitoring.embeddings import embed_texts, novelty
    from tuneloop.training.predict import Classifier

    write_tiny_model(tmp_path / "m")
    clf = Classifier.load(tmp_path / "m", device="cpu")
    texts = ["where is my card", "top up failed", "where is my card"]
    emb = embed_texts(clf, texts)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(emb[0], emb[2], atol=1e-5) and embed_texts(clf, []).shape == (0, 32)
    assert novelty(emb[:1], emb) == pytest.approx([0, novelty(emb[:1], emb[1:2])[0], 0], abs=1e-5)


def test_report_free_path_gives_the_reports_numbers():
    """``with_report=False`` (benchmarks) computes every signal's test directly, without Evidently's Report."""
    train = pd.read_csv(__import__("conftest").BANKING77_DIR / "train.csv") if __import__(
        "conftest").BANKING77_DIR.exists() else None
    if train is None:
        pytest.skip("Banking77 not found")
    rng = np.random.default_rng(3)
    rows = train.sample(260, random_state=0)
    frame = pd.DataFrame({"text": rows["text"].to_numpy(), "label": rows["category"].to_numpy(),
                          "confidence": rng.beta(6, 1, 260),
                          "true_label": np.where(rng.random(260) < 0.5, rows["category"].to_numpy(), None)})
    ref, cur = frame.iloc[:200].reset_index(drop=True), frame.iloc[200:].reset_index(drop=True)
    cur["text"] = cur["text"].str.replace("a", "q")  # some descriptor and text drift
    emb_r, emb_c = _emb(rng, 200), _emb(rng, 60, shift=1.5)
    cal = fit_calibration(ref["confidence"], ref["true_label"].notna())
    kw = dict(reference_embeddings=emb_r, current_embeddings=emb_c, calibration=cal,
              config=DriftConfig(label_permutations=300, embedding_permutations=300))
    full, fast = compute_signals(ref, cur, **kw), compute_signals(ref, cur, with_report=False, **kw)
    assert full.snapshot is not None and fast.snapshot is None
    for a, b in zip(full.signals, fast.signals):
        assert (a.name, a.fired) == (b.name, b.fired)
        assert a.value == pytest.approx(b.value, rel=1e-6, abs=1e-12), a.name
        if a.name in ("label_drift", "confidence_drift"):
            assert a.details == pytest.approx(b.details), a.name
    desc = {k: v["reference_mean"] for k, v in full.signal(DESCRIPTORS).details.items()}
    assert desc == pytest.approx({k: v["reference_mean"] for k, v in fast.signal(DESCRIPTORS).details.items()})
    assert full.signal(EMBEDDING).p_value < 0.01 and full.estimated_accuracy == fast.estimated_accuracy
    emb = full.signal(EMBEDDING)
    assert emb.details["evidently_score"] == pytest.approx(emb.value)  # Evidently's section shows our statistic
    metrics = {m["metric_name"].split("(")[0] for m in full.snapshot.dict()["metrics"]}
    assert {"ValueDrift", "EmbeddingsDriftScore", "MeanValue"} <= metrics
