"""How a saved classifier turns token states into logits: the pooling of the last layer.

Two poolings, recorded in the saved ``config.json`` as ``tuneloop_pooling`` (absent: ``cls``):

* ``cls``: the BERT pooler (dense + tanh on the ``[CLS]`` state), what
  ``AutoModelForSequenceClassification`` does;
* ``mean``: the mask-weighted mean of the last layer's token states, the pooling that
  all-MiniLM-L6-v2 was trained with (sentence-transformers, Reimers & Gurevych 2019,
  "Sentence-BERT"); the pooler is left unused. Measured on Banking77 in the README table.

Both go through :func:`forward_logits`, which training, evaluation and serving all call, so a
model is evaluated exactly as it was trained. Mean pooling needs a BERT-style classifier
(``base_model``, ``dropout``, ``classifier`` attributes); :func:`check_pooling` says so early.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_KEY = "tuneloop_pooling"
POOLINGS = ("cls", "mean")


def pooling_of(model) -> str:
    """The pooling a (possibly PEFT-wrapped) classifier was built with: ``"cls"`` or ``"mean"``."""
    return getattr(model.config, POOLING_KEY, "cls")


def check_pooling(model, pooling: str) -> None:
    """Record ``pooling`` in ``model.config`` (saved with it).

    Raises:
        ValueError: ``pooling`` is unknown, or ``mean`` on a model without the BERT-style
            ``base_model`` / ``dropout`` / ``classifier`` attributes.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: use one of {POOLINGS}")
    if pooling == "mean" and not all(hasattr(model, a) for a in ("base_model", "dropout", "classifier")):
        raise ValueError(f"mean pooling needs a BERT-style classifier; {type(model).__name__} is not one: use pooling cls")
    setattr(model.config, POOLING_KEY, pooling)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden (b, t, h)`` over the unmasked positions of ``attention_mask (b, t)``: ``(b, h)``,
    in ``hidden``'s dtype; a row without tokens gives zeros (its count is taken as 1).

    tuneloop's one mean pooling: the ``mean`` head here and the monitor's sentence embeddings
    (:func:`tuneloop.monitoring.embeddings.embed_texts`).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def head_logits(model, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(b, n_labels)`` from the last layer's states ``hidden (b, t, h)`` of a BERT-style classifier."""
    if pooling_of(model) == "mean":
        pooled = mean_pool(hidden, attention_mask)
    else:
        pooled = model.base_model.pooler(hidden)
    return model.classifier(model.dropout(pooled))


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
    """Logits ``(b, n_labels)`` of ``model`` (a ``*ForSequenceClassification``, PEFT-wrapped or not)
    for token ids ``(b, t)``, pooled as the model was built. Extra tokenizer outputs
    (``token_type_ids``) pass through."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA is injected in place
    if pooling_of(hf) != "mean":
        return model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits
    hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
    return head_logits(hf, hidden, attention_mask)


class PooledClassifier(nn.Module):
    """The training view of a classifier: logits through :func:`forward_logits` and a
    cross-entropy loss with label smoothing. Shares (does not copy) ``model``'s modules.

    Args:
        model: a ``*ForSequenceClassification`` (or its PEFT wrapper).
        label_smoothing: of the cross-entropy loss (0..1).
    """

    def __init__(self, model, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                length: torch.Tensor | None = None, **inputs) -> SequenceClassifierOutput:
        """``length`` (the length-grouped sampler's column) is ignored."""
        logits = forward_logits(self.model, input_ids, attention_mask, **inputs)
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
