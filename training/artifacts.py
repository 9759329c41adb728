"""Everything saved with a trained model: weights + tokenizer, the drift reference sample, the
evaluation folder, the data report, the model card, and the BentoML metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tuneloop.state.home import Home
from tuneloop.state.registry import CALIBRATION_FILE, REFERENCE_FILE, save_model
from tuneloop.training.card import CARD_FILE, model_card
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataSplits
from tuneloop.training.evaluate import evaluate_predictions
from tuneloop.training.model import default_base_model
from tuneloop.training.predict import Classifier

EVALUATION_DIR = "evaluation"


def reference_sample(clf: Classifier, rows: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """The drift reference: up to ``size`` rows (columns ``text`` and, when known, ``label``) with
    the model's predictions.

    Returns:
        DataFrame with columns ``text, label`` (predicted), ``confidence`` (0..1), ``true_label``
        (None where unknown).
    """
    sample = rows.sample(n=min(size, len(rows)), random_state=seed)
    pred, conf = clf.predict(sample["text"].tolist())
    truth = ([None if pd.isna(v) else v for v in sample["label"]] if "label" in sample else [None] * len(sample))
    return pd.DataFrame({"text": sample["text"].tolist(), "label": pred, "confidence": np.round(conf, 6),
                         "true_label": truth})


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("per_class", "calibration")}


def save_result(home: Home, cfg: TrainConfig, splits: DataSplits, result, extra_meta: dict | None = None,
                reference_rows: pd.DataFrame | None = None) -> str:
    """Save a :class:`tuneloop.training.train.TrainResult` as a new model version; returns the tag.

    The version folder holds ``model.safetensors``, ``config.json``, the tokenizer files,
    ``reference.jsonl``, ``evaluation/`` (metrics.json with per-class report and calibration,
    confusion_matrix.png, reliability.png, misclassified.jsonl), ``data_report.json`` and
    ``MODEL_CARD.md``. ``reference_rows`` (column ``text``, optionally ``label``) replaces the
    validation split as the source of the drift reference (the loop re-baselines on traffic).
    """
    source = splits.validation if reference_rows is None or reference_rows.empty else reference_rows
    clf = result.classifier
    reference = reference_sample(clf, source, cfg.reference_size, cfg.seed)
    # validation-split outputs for the monitor's confidence calibration (CBPE, monitoring/performance.py)
    calibration = (reference if source is splits.validation
                   else reference_sample(clf, splits.validation, cfg.reference_size, cfg.seed))
    test_texts = splits.test["text"].tolist()
    proba = clf.predict_proba(test_texts)
    evaluation = evaluate_predictions(test_texts, splits.test["label"].tolist(), proba, clf.labels)
    metadata = {
        "labels": splits.labels,
        "metrics": {"test": {**_summary(result.test_metrics), "ece": evaluation["ece"]},
                    "validation": _summary(result.val_metrics)},
        "base_model": Path(cfg.base_model or default_base_model()).name,
        "train_config": cfg.model_dump(mode="json"),
        "data_sha256": splits.report.train_sha256,
        "train_rows": result.train_rows,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "reference_sample": {"file": REFERENCE_FILE, "rows": len(reference),
                             "source": "validation split" if source is splits.validation else "recent traffic"},
        **(extra_meta or {}),
    }
    if cfg.quantize == "int8":
        from tuneloop.training.quantize import compare_int8

        metadata["int8"] = compare_int8(clf, test_texts, splits.test["label"].tolist())
        metadata["serving_quantization"] = "int8"

    def write(path: Path) -> None:
        clf.model.save_pretrained(path)
        clf.tokenizer.save_pretrained(path)
        reference.to_json(path / REFERENCE_FILE, orient="records", lines=True)
        calibration[["label", "confidence", "true_label"]].to_json(path / CALIBRATION_FILE, orient="records",
                                                                   lines=True)
        evaluate_predictions(test_texts, splits.test["label"].tolist(), proba, clf.labels, path / EVALUATION_DIR)
        (path / EVALUATION_DIR / "validation_metrics.json").write_text(json.dumps(result.val_metrics, indent=1))
        if "int8" in metadata:
            (path / EVALUATION_DIR / "int8.json").write_text(json.dumps(metadata["int8"], indent=1))
        (path / "data_report.json").write_text(json.dumps(splits.report.to_dict(), indent=1))
        (path / CARD_FILE).write_text(model_card(cfg.model_name, metadata, splits.report.to_dict()))

    return save_model(home, write, name=cfg.model_name, metadata=metadata,
                      labels={"base": metadata["base_model"], "method": cfg.method})
