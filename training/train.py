"""Fine-tune a transformer sequence classifier, evaluate it and save it to the model store.

Flow: seed -> augment the training split -> tokenizer + model (shipped MiniLM or a local folder,
transfer strategy applied) -> Hugging Face ``Trainer`` (dynamic padding, length-grouped batches,
evaluation every epoch, early stopping on validation macro F1, best checkpoint restored; with
frozen bottom layers, trained on their cached output) -> test metrics -> a new version in the
BentoML store (``training/artifacts.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd

from tuneloop.state.home import Home
from tuneloop.state.registry import promote_if_first
from tuneloop.training.artifacts import reference_sample, save_result  # noqa: F401  (re-exported)
from tuneloop.training.augment import augment
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataSplits
from tuneloop.training.distributed import (
    ddp_backend,
    leave_unless_main,
    local_device,
    trace_collator,
    trace_parameters,
    trainer_dir,
)
from tuneloop.training.evaluate import classification_metrics
from tuneloop.training.model import build_model, default_base_model, make_optimizer  # noqa: F401  (re-exported)
from tuneloop.training.predict import Classifier, pick_device

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        tag: the saved model's tag, or None when not saved.
        classifier: the trained model, loaded for inference.
        test_metrics: ``classification_metrics`` on the test split (0..1).
        val_metrics: the same on the validation split.
        seconds: wall time of fine-tuning (s), caching of frozen layers included.
        epochs_run: epochs actually trained (early stopping may cut them).
        train_rows: rows trained on (augmented and extra rows included).
        promoted: True when this model became the champion (the first model of a home).
        extra: ``examples_per_second`` (training examples x epochs / seconds), ``cache_seconds``.
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


def _encode(tokenizer, df: pd.DataFrame, label2id: dict[str, int], max_length: int, padding: str = "dynamic"):
    from datasets import Dataset

    enc = tokenizer(df["text"].tolist(), truncation=True, max_length=max_length,
                    padding="max_length" if padding == "max_length" else False)
    return Dataset.from_dict({
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
        "length": [len(ids) for ids in enc["input_ids"]],
        "labels": [label2id[l] for l in df["label"]],
    })


def _cached(model, tokenizer, df: pd.DataFrame, label2id: dict[str, int], cfg: TrainConfig, depth: int, device: str):
    from tuneloop.training.frozen import CachedStates, cache_hidden_states

    ids = tokenizer(df["text"].tolist(), truncation=True, max_length=cfg.max_length)["input_ids"]
    return CachedStates(cache_hidden_states(model, ids, depth, device=device), [label2id[l] for l in df["label"]])


def fine_tune(cfg: TrainConfig, splits: DataSplits, extra_train: pd.DataFrame | None = None,
              callbacks: list | None = None) -> TrainResult:
    """Fine-tune on ``splits.train`` (augmented as configured, + ``extra_train`` rows, columns
    text/label), early-stop on ``splits.validation`` macro F1, evaluate on ``splits.test``.
    ``callbacks`` are extra ``TrainerCallback``s (the tuner's pruning). Nothing is saved.

    Under torchrun (:mod:`tuneloop.training.distributed`) every rank trains its share of the batches
    (DDP); afterwards ranks other than 0 exit (``SystemExit(0)``) and rank 0 alone evaluates."""
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    from tuneloop.training.progress import on_terminal
    from tuneloop.training.progress_lines import ProgressLines

    set_seed(cfg.seed)
    labels = splits.labels
    label2id = {l: i for i, l in enumerate(labels)}
    train_df, counts = augment(splits.train, cfg.augment)
    splits.report.augmented_rows = counts
    if extra_train is not None:
        train_df = pd.concat([train_df, extra_train[["text", "label"]]], ignore_index=True)
    tokenizer, model = build_model(cfg, labels)
    device = pick_device()
    # evaluation batches are sequential: sorted by length, each pads to a near-equal length
    val_df = splits.validation.iloc[splits.validation["text"].str.len().argsort(kind="stable")]
    start = time.perf_counter()
    cache_seconds = 0.0
    if cfg.method in ("freeze", "head") and cfg.cache_frozen:
        from tuneloop.training.frozen import TopStack, collate_states, frozen_depth

        depth = frozen_depth(model)
        cache_device = local_device(device)  # under torchrun on GPUs: this rank's own GPU
        model.to(cache_device)
        train_ds = _cached(model, tokenizer, train_df, label2id, cfg, depth, cache_device)
        val_ds = _cached(model, tokenizer, val_df, label2id, cfg, depth, cache_device)
        cache_seconds = time.perf_counter() - start
        trained, collator = TopStack(model, depth, cfg.label_smoothing), collate_states
    else:
        from tuneloop.training.heads import PooledClassifier

        train_ds = _encode(tokenizer, train_df, label2id, cfg.max_length, cfg.padding)
        val_ds = _encode(tokenizer, val_df, label2id, cfg.max_length, cfg.padding)
        trained, collator = PooledClassifier(model, cfg.label_smoothing), DataCollatorWithPadding(tokenizer)

    def compute_metrics(pred) -> dict:
        m = classification_metrics([labels[i] for i in pred.label_ids], [labels[i] for i in pred.predictions.argmax(-1)],
                                   labels=labels, per_class=False)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    with trainer_dir("tuneloop-train-") as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=128, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler, seed=cfg.seed,
            gradient_accumulation_steps=cfg.gradient_accumulation,
            eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", save_total_limit=1,
            load_best_model_at_end=True, metric_for_best_model="macro_f1", greater_is_better=True,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", report_to="none",
            disable_tqdm=not (cfg.progress and on_terminal()),  # bars redraw in place on a terminal only
            use_cpu=device == "cpu", bf16=device == "cuda", dataloader_num_workers=0, ddp_backend=ddp_backend(device),
            remove_unused_columns=False,  # the wrappers take what they need (and the loss, label smoothing included)
        )
        trainer = Trainer(model=trained, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=trace_collator(collator), compute_metrics=compute_metrics,
                          optimizers=(make_optimizer(trained, cfg), None),
                          callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience),
                                     *([ProgressLines()] if cfg.progress and not on_terminal() else []),
                                     *(callbacks or [])])
        trainer.train()
        seconds = time.perf_counter() - start
        epochs_run = float(trainer.state.epoch or 0)
    model = trainer.model.model  # the wrapped classifier (PEFT-wrapped for lora)
    trace_parameters(model)
    leave_unless_main()  # distributed: rank 0 alone goes on to evaluate
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
        extra={"examples_per_second": len(train_df) * max(epochs_run, 1e-9) / seconds,
               "cache_seconds": round(cache_seconds, 2)},
    )


def train(cfg: TrainConfig, home: Home, splits: DataSplits | None = None, extra_train: pd.DataFrame | None = None,
          extra_meta: dict | None = None) -> TrainResult:
    """Load data (unless ``splits`` is given), fine-tune, evaluate, save to the store, and make the
    model the champion if the home has none yet; each step through the task of ``cfg.task``
    (:mod:`tuneloop.training.task`).

    Raises:
        tuneloop.training.data.DataError: the data cannot be used (message says why).
    """
    from tuneloop.training.task import get_task

    task = get_task(cfg.task)
    splits = splits or task.load_splits(cfg)
    result = task.fine_tune(cfg, splits, extra_train)
    result.tag = task.save(home, cfg, splits, result, extra_meta)
    result.promoted = promote_if_first(home, result.tag)
    return result
