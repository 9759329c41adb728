"""Training: data validation, splits, the fine-tuning loop on a tiny random BERT, saving to the
store with its metadata, and the champion pointer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_LABELS
from conftest import write_intent_csv as _write_csv

from tuneloop.state.registry import get_model, list_models, promote, read_champion
from tuneloop.training.augment import keyboard_typos
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataError, clean, data_sha256, load_splits, normalise, stratified_split


def test_missing_path_and_columns_give_clear_errors(tmp_path, tiny_data):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"column\(s\) \['intent'\] not found; columns are \['text', 'category'\]"):
        load_splits(str(tiny_data), label_column="intent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no train.csv"):
        load_splits(str(empty))


def test_single_label_is_refused(tmp_path):
    f = tmp_path / "one.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "category": ["x"] * 10}).to_csv(f, index=False)
    with pytest.raises(DataError, match="at least 2"):
        load_splits(str(f))


def test_clean_drops_empty_and_duplicates_and_hash_ignores_order():
    raw = pd.DataFrame({"t": ["  a  b ", "a b", "", "c", None], "y": ["x", "x", "x", "y", "y"]})
    df, n_empty, n_dup = clean(normalise(raw, "t", "y", "test"))
    assert list(df["text"]) == ["a b", "c"] and n_empty == 1 and n_dup == 1
    assert data_sha256(df) == data_sha256(df.iloc[::-1]) and len(data_sha256(df)) == 64


def test_split_is_stratified_and_leakage_reported(tmp_path, tiny_data):
    train = pd.read_csv(tiny_data / "train.csv")
    leak = pd.read_csv(tiny_data / "test.csv")
    leak.loc[0, "text"] = train.loc[0, "text"]
    leak.to_csv(tiny_data / "test.csv", index=False)
    s = load_splits(str(tiny_data), val_fraction=0.25, seed=3)
    assert s.labels == sorted(TINY_LABELS)
    assert s.validation["label"].value_counts().to_dict() == {l: 3 for l in TINY_LABELS}
    assert not set(s.train["text"]) & set(s.validation["text"])
    assert s.report.leaked_texts == 1 and s.report.leaked_examples == [train.loc[0, "text"].lower()]
    rest, held = stratified_split(s.train, 0.5, 0)
    assert len(rest) + len(held) == len(s.train)


def test_single_file_gets_a_test_split(tmp_path):
    f = tmp_path / "all.jsonl"
    _write_csv(tmp_path / "x.csv", 10)
    pd.read_csv(tmp_path / "x.csv").to_json(f, orient="records", lines=True)
    s = load_splits(str(f), test_fraction=0.2)
    assert len(s.test) == 8 and len(s.train) + len(s.validation) == 32


def test_keyboard_typos_are_seeded_and_change_text():
    text = "I am still waiting on my card?"
    a = keyboard_typos(text, random.Random(7))
    assert a == keyboard_typos(text, random.Random(7)) and a != text
    assert keyboard_typos("1234 ?!", random.Random(0)) == "1234 ?!"
    with pytest.raises(ValueError):
        keyboard_typos(text, random.Random(0), rate=2)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_saves_versioned_model_with_metadata_and_first_is_champion(home, tiny_data, tiny_base, method):
    from tuneloop.training.train import train

    cfg = TrainConfig(data=str(tiny_data), base_model=str(tiny_base), method=method, epochs=2, batch_size=8,
                      learning_rate=1e-3, progress=False, reference_size=50, lora_r=4, lora_alpha=8)
    result = train(cfg, home)
    assert result.promoted and read_champion(home).tag == result.tag
    stored = get_model(home, result.tag)
    files = {p.name for p in Path(stored.path).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "reference.jsonl", "evaluation", "MODEL_CARD.md",
            "data_report.json"} <= files
    evaluation = {p.name for p in (Path(stored.path) / "evaluation").iterdir()}
    assert {"metrics.json", "confusion_matrix.png", "reliability.png", "misclassified.jsonl"} <= evaluation
    card = (Path(stored.path) / "MODEL_CARD.md").read_text()
    assert "## Test metrics" in card and "## Limits" in card
    assert not any(f.startswith("adapter") for f in files)  # LoRA merged before saving
    meta = stored.info.metadata
    assert meta["labels"] == sorted(TINY_LABELS) and len(meta["data_sha256"]) == 64 and meta["data_sha256"] in card
    assert meta["train_config"]["method"] == method and meta["base_model"] == "tiny-base"
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "ece"):
        assert 0.0 <= meta["metrics"]["test"][key] <= 1.0
    assert result.test_metrics["n"] == 12 and "per_class" in result.test_metrics
    ref = pd.read_json(Path(stored.path) / "reference.jsonl", lines=True)
    assert list(ref.columns) == ["text", "label", "confidence", "true_label"] and 0 < len(ref) <= 50
    assert ref["confidence"].between(0, 1).all()
    # a second model is a new version and does not take over the champion
    second = train(cfg.model_copy(update={"seed": 1}), home)
    assert not second.promoted and read_champion(home).tag == result.tag
    assert [str(m.tag) for m in list_models(home)] == [result.tag, second.tag]


def test_training_learns_separable_data(home, tiny_data, tiny_base):
    from tuneloop.training.train import fine_tune

    cfg = TrainConfig(data=str(tiny_data), base_model=str(tiny_base), epochs=15, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0,
                      progress=False, patience=15)
    splits = load_splits(cfg.data, val_fraction=0.25)
    result = fine_tune(cfg, splits)
    assert result.test_metrics["accuracy"] >= 0.9, result.test_metrics


def test_promote_is_atomic_and_checks_the_tag(champion_home):
    from tuneloop.state.registry import ModelNotFoundError

    before = read_champion(champion_home)
    with pytest.raises(ModelNotFoundError):
        promote(champion_home, "tuneloop-classifier:nope", "manual")
    assert read_champion(champion_home) == before
    assert json.loads(champion_home.champion_path.read_text())["tag"] == before.tag
    assert not list(champion_home.root.glob(".champion.*"))


def test_config_validation_and_yaml(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        TrainConfig(data="x", base_model=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        TrainConfig(data="x", epochs=0)
    y = tmp_path / "c.yaml"
    y.write_text("data: somewhere\nmethod: lora\nepochs: 2\n")
    cfg = TrainConfig.from_yaml(y, epochs=3)
    assert cfg.method == "lora" and cfg.epochs == 3
    y.write_text("data: x\nbogus: 1\n")
    with pytest.raises(ValueError):
        TrainConfig.from_yaml(y)
    assert TrainConfig.for_preset("quick", data="x").freeze_layers > 0


def test_presets_and_an_explicit_method_on_top():
    full = TrainConfig.for_preset("full", data="x")
    assert (full.method, full.freeze_layers, full.pooling, full.label_smoothing) == ("freeze", 2, "mean", 0.1)
    every = TrainConfig.for_preset("full", data="x", method="full")  # the preset's frozen depth does not apply
    assert every.method == "full" and every.freeze_layers == 0
    assert TrainConfig.for_preset("all_layers", data="x").method == "full"
    assert TrainConfig(data="x", method="lora", freeze_layers=2).method == "lora"  # no silent switch to freeze


def test_every_config_field_is_data_or_recipe():
    """Retraining inherits the data fields and takes the recipe from its preset: a new field must say which."""
    from tuneloop.training.config import DATA_FIELDS, RECIPE_FIELDS, TrainConfig, data_config

    assert not DATA_FIELDS & RECIPE_FIELDS
    assert DATA_FIELDS | RECIPE_FIELDS == set(TrainConfig.model_fields)
    saved = TrainConfig(data="d", text_column="t", max_train_per_label=5, epochs=1).model_dump()
    assert data_config(saved) == {k: saved[k] for k in DATA_FIELDS} and "epochs" not in data_config(saved)
