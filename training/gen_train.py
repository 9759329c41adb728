"""Fine-tune a causal language model on request -> reply pairs with TRL's ``SFTTrainer``.

Flow: seed -> augment the training requests -> base model (SmolLM2-135M-Instruct converted once, or a
local folder) -> transfer method (``lora``: PEFT LoRA adapters, merged before saving; ``freeze``:
embeddings + bottom N decoder layers frozen; ``full``) -> ``SFTTrainer`` on conversational
prompt/completion rows (the chat template the model serves with; loss on the reply only, the
default for that format; the template closes the reply with the end-of-sequence token
``<|im_end|>``, so the model learns to stop: :func:`check_reply_ends_with_eos` verifies it on the
trainer's own tokenised rows before training) -> length-grouped batches without packing
(padding-free packing needs FlashAttention, not on CPU) -> early stopping on validation loss,
best epoch restored -> test evaluation of the fine-tuned model and, beside it, of the base model.

What differs from ``SFTConfig``'s defaults and why (benchmarks/gen_bench.py measures the whole
recipe against the defaults): no gradient checkpointing (a 135 M model fits; recomputing
activations cost ~30 % of step time on CPU), length-grouped sampling instead of random, LoRA
instead of training every weight.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd

from tuneloop.training.augment import augment
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataSplits
from tuneloop.training.distributed import ddp_backend, leave_unless_main, trace_collator, trace_parameters, trainer_dir
from tuneloop.training.train import TrainResult

EVAL_SEED = 0  # the seeded test sample every fine-tune is scored on (independent of the training seed)

log = logging.getLogger(__name__)


def sft_rows(df: pd.DataFrame) -> list[dict]:
    """TRL's conversational prompt/completion rows from columns ``text`` and ``reply``."""
    return [{"prompt": [{"role": "user", "content": t}], "completion": [{"role": "assistant", "content": r}]}
            for t, r in zip(df["text"], df["reply"])]


def apply_method(model, cfg: TrainConfig):
    """Set which weights train: ``lora`` returns a PEFT model (adapters on
    ``cfg.lora_target_modules``, default q/k/v/o projections); ``freeze`` freezes the input
    embeddings and the first ``cfg.freeze_layers`` decoder layers; ``full`` trains all.

    Raises:
        ValueError: ``freeze_layers`` is not below the model's number of layers.
    """
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"]
        return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    if cfg.method == "freeze":
        layers = model.model.layers
        if cfg.freeze_layers >= len(layers):
            raise ValueError(f"freeze_layers={cfg.freeze_layers} leaves nothing to train: the model has {len(layers)} "
                             "decoder layers")
        model.get_input_embeddings().requires_grad_(False)
        for layer in layers[: cfg.freeze_layers]:
            layer.requires_grad_(False)
    return model


def check_reply_ends_with_eos(dataset, eos_id: int) -> None:
    """Every tokenised training row's scored reply tokens (``labels`` not -100, or the
    ``completion_mask`` span of older TRL releases) hold the
    end-of-sequence token, so the loss teaches the model to stop.

    Raises:
        ValueError: a row whose reply tokens lack it (the model would never learn to stop).
    """
    cols = dataset.column_names
    if "labels" not in cols and "completion_mask" not in cols:
        raise ValueError(f"the tokenised rows have neither labels nor a completion_mask (columns {cols}): the loss "
                         "would cover the prompt too")
    for i, row in enumerate(dataset):
        if "labels" in cols:  # TRL >= 1.16: labels, -100 on the prompt
            scored = [t for t in row["labels"] if t != -100]
        else:
            scored = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if m]
        if eos_id not in scored:
            raise ValueError(f"training row {i}: the reply tokens do not contain the end-of-sequence token {eos_id}; "
                             "the model would not learn to stop (check the chat template)")


def fine_tune_generator(cfg: TrainConfig, splits: DataSplits, extra_train: pd.DataFrame | None = None,
                        callbacks: list | None = None) -> TrainResult:
    """Fine-tune on ``splits.train`` (+ ``extra_train`` rows, columns text/reply), early-stop on
    validation loss, evaluate on ``splits.test``. Nothing is saved.

    Returns:
        TrainResult: ``classifier`` is the merged :class:`~tuneloop.training.generator.Generator`;
        ``test_metrics`` as :func:`tuneloop.training.generation.evaluate_generator`; ``val_metrics``
        ``{"loss", "perplexity"}`` of the restored best epoch; ``extra``: ``tokens_per_second``
        (trained tokens x epochs / s), ``train_tokens``, ``base_test_metrics`` and ``samples``
        (the scored rows with base and fine-tuned replies) when ``cfg.compare_base``.

    Under torchrun (:mod:`tuneloop.training.distributed`) every rank trains its share of the batches
    (DDP); after the validation loss, ranks other than 0 exit (``SystemExit(0)``) and rank 0 alone
    evaluates.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from tuneloop.training.base_llm import default_causal_base
    from tuneloop.training.generation import evaluate_generator
    from tuneloop.training.generator import Generator, prepare_tokenizer
    from tuneloop.training.predict import pick_device
    from tuneloop.training.progress import on_terminal
    from tuneloop.training.progress_lines import ProgressLines

    set_seed(cfg.seed)
    base_dir = cfg.base_model or default_causal_base()
    train_df, counts = augment(splits.train[["text", "reply", "label"]], cfg.augment)
    splits.report.augmented_rows.update(counts)
    if extra_train is not None and len(extra_train):
        train_df = pd.concat([train_df, extra_train[["text", "reply"]].assign(label="feedback")], ignore_index=True)
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "right"  # training pads on the right; generation (Generator) on the left
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    model = apply_method(model, cfg)
    start = time.perf_counter()
    with trainer_dir("tuneloop-sft-") as out_dir:
        args = SFTConfig(
            output_dir=out_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler,
            gradient_accumulation_steps=cfg.gradient_accumulation, seed=cfg.seed, max_length=cfg.max_length,
            packing=False, gradient_checkpointing=False, completion_only_loss=True,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", save_total_limit=1,
            load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
            report_to="none", disable_tqdm=not (cfg.progress and on_terminal()), use_cpu=device == "cpu",
            bf16=device == "cuda", dataloader_num_workers=0, ddp_backend=ddp_backend(device),
        )
        trainer = SFTTrainer(
            model=model, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list(sft_rows(train_df)), eval_dataset=Dataset.from_list(sft_rows(splits.validation)),
            callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience),
                       *([ProgressLines()] if cfg.progress and not on_terminal() else []), *(callbacks or [])],
        )
        if cfg.progress and not on_terminal():  # ProgressLines writes the lines; the Trainer's dict printer repeats them
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.data_collator = trace_collator(trainer.data_collator)  # $TUNELOOP_DDP_TRACE only
        check_reply_ends_with_eos(trainer.train_dataset, tokenizer.eos_token_id)
        train_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        trainer.train()
        seconds = time.perf_counter() - start
        epochs_run = float(trainer.state.epoch or 0)
        val_loss = float(trainer.evaluate()["eval_loss"])
    model = trainer.model
    trace_parameters(model)
    leave_unless_main()  # distributed: rank 0 alone goes on to evaluate
    if cfg.method == "lora":
        model = model.merge_and_unload()
    model = model.to(dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    gen = Generator(tokenizer=prepare_tokenizer(tokenizer), model=model, device=device)

    def evaluate(predictor, label: str):
        # one sample for every training seed: runs with different seeds are scored on the same rows
        return evaluate_generator(predictor, splits.test, cfg.eval_rows, cfg.eval_max_new_tokens, EVAL_SEED,
                                  perplexity_rows=cfg.perplexity_rows, progress=label if cfg.progress else None)

    test_metrics, sample = evaluate(gen, "evaluate fine-tuned")
    extra = {"tokens_per_second": train_tokens * max(epochs_run, 1e-9) / seconds, "train_tokens": train_tokens,
             "samples": sample.rename(columns={"generated": "fine_tuned_reply"})}
    if cfg.compare_base:
        base = Generator.load(base_dir, device=device)
        extra["base_test_metrics"], base_sample = evaluate(base, "evaluate base")
        extra["samples"]["base_reply"] = base_sample["generated"].tolist()
        del base
    return TrainResult(tag=None, classifier=gen, test_metrics=test_metrics,
                       val_metrics={"loss": val_loss, "perplexity": math.exp(val_loss), "n": len(splits.validation)},
                       seconds=seconds, epochs_run=epochs_run, train_rows=len(train_df), extra=extra)

