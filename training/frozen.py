"""Train only the top of a BERT-style classifier on cached outputs of its frozen bottom.

With the embeddings and the first N encoder layers frozen (method ``freeze``, or all of them for
``head``), their output for a given text never changes across epochs. Recomputing it every epoch
is waste: :func:`cache_hidden_states` runs the frozen part once per text, and :class:`TopStack`
trains the remaining layers + pooler + classifier on the cached states. The modules are shared
with the full model, so after training the full model holds the trained weights and is saved as
usual. Gain measured in ``benchmarks/train_bench.py`` (README table).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tuneloop.training.heads import head_logits


def run_layers(base, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
    """Run encoder ``layers`` (a slice of ``base.encoder.layer``) on ``hidden (b, t, h)``.

    The layers' attention mask is built by ``transformers.masking_utils.create_bidirectional_mask``,
    the public function BERT-style encoders use in their own ``forward`` (transformers >= 5.20), so
    the result equals the uncached model's (``tests/test_training_techniques.py`` checks it).

    Args:
        base: the encoder (``model.base_model``), for its config.
        hidden: token states entering the first of ``layers``, ``(b, t, h)``.
        attention_mask: ``(b, t)``, 1 for real tokens, 0 for padding.
        layers: the encoder layers to apply, bottom first.

    Returns:
        The token states after the last layer, ``(b, t, h)``.
    """
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask)
    return hidden


def frozen_depth(model) -> int:
    """How many encoder layers, counted from the bottom, have no trainable parameter (0..L).

    Raises:
        ValueError: the embeddings still train (nothing can be cached).
    """
    base = model.base_model
    if any(p.requires_grad for p in base.embeddings.parameters()):
        raise ValueError("the embeddings are trainable: nothing below the first encoder layer is frozen")
    depth = 0
    for layer in base.encoder.layer:
        if any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth


@torch.inference_mode()
def cache_hidden_states(model, input_ids: list[list[int]], depth: int, batch_size: int = 128,
                        device: str = "cpu") -> list[torch.Tensor]:
    """Hidden states after the embeddings and the first ``depth`` layers.

    Args:
        model: a BERT-style classifier (``base_model.embeddings``, ``base_model.encoder.layer``);
            its encoder is put in eval mode.
        input_ids: token ids per text, unpadded.
        depth: frozen layers to run (0: the embeddings only).
        batch_size: texts per forward pass; texts are batched by token count
            (:mod:`tuneloop.training.batching`), padded on the right with id 0 (masked).
        device: where the forward passes run.

    Returns:
        One ``(len_i, hidden)`` float32 CPU tensor per text, in input order (no padding kept).
    """
    from tuneloop.training.batching import length_batches, run_batched, token_rows

    base = model.base_model.eval()
    rows = token_rows(input_ids)

    def run(idx: np.ndarray) -> list[torch.Tensor]:
        batch = rows.batch(idx, device)
        mask = batch["attention_mask"]
        hidden = run_layers(base, base.embeddings(input_ids=batch["input_ids"]), mask, base.encoder.layer[:depth])
        hidden = hidden.float().cpu()
        return [hidden[row, : len(input_ids[i])].clone() for row, i in enumerate(idx)]

    out: list[torch.Tensor | None] = [None] * len(input_ids)
    return run_batched(length_batches(rows.lengths, batch_size=batch_size), run, out)


class CachedStates(torch.utils.data.Dataset):
    """Cached hidden states + label ids. Items carry ``input_ids`` only so the Trainer's
    length-grouped sampler can read each text's length."""

    def __init__(self, states: list[torch.Tensor], labels: list[int]) -> None:
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict:
        return {"hidden_states": self.states[i], "labels": self.labels[i], "input_ids": range(len(self.states[i]))}


def collate_states(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a batch of cached states: ``hidden_states (b, t, h)``, ``attention_mask (b, t)``, ``labels (b,)``."""
    width = max(len(it["hidden_states"]) for it in items)
    hidden = items[0]["hidden_states"].shape[-1]
    states = torch.zeros((len(items), width, hidden))
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["hidden_states"])
        states[row, :n], mask[row, :n] = it["hidden_states"], 1
    return {"hidden_states": states, "attention_mask": mask, "labels": torch.tensor([it["labels"] for it in items])}


class TopStack(nn.Module):
    """Encoder layers ``depth..L`` + pooling (:mod:`tuneloop.training.heads`) + dropout + classifier of
    ``model``, fed with cached states; shares (does not copy) the modules, so training it trains ``model``.

    Args:
        model: a BERT-style ``*ForSequenceClassification`` (``base_model.encoder.layer``,
            ``base_model.pooler``, ``dropout``, ``classifier``).
        depth: frozen layers below (their output is the input here).
        label_smoothing: of the cross-entropy loss.
    """

    def __init__(self, model, depth: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model, self.depth = model, depth
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        base = self.model.base_model
        hidden_states = run_layers(base, hidden_states, attention_mask, base.encoder.layer[self.depth :])
        logits = head_logits(self.model, hidden_states, attention_mask)
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
