"""Length-sorted batching: how tuneloop runs a model over many texts.

A batch is padded to its longest row, so mixing short and long texts wastes compute on padding.
Every batched forward pass in tuneloop therefore does the same four steps, all here:

1. :func:`length_batches`: order the rows by length (stable) and cut the order into batches,
   either of at most ``batch_size`` rows or along the cuts of a ``plan`` (the service's
   cost-optimal groups, :func:`tuneloop.serving.inference.plan_groups`);
2. :meth:`TokenRows.batch`: pad one batch's token rows to its longest row, as tensors;
3. run the model on it (the caller's function);
4. put each row's result back at its input position (:func:`run_batched`).

Users: :meth:`tuneloop.training.predict.Classifier.predict_proba`, the service's grouped inference
(:func:`tuneloop.serving.inference.predict_proba`), the monitor's embeddings
(:func:`tuneloop.monitoring.embeddings.embed_texts`) and the frozen-layer cache
(:func:`tuneloop.training.frozen.cache_hidden_states`). Padding here gives the same tensors as the
tokenizer's own ``padding=True`` (same pad ids, same side), so results do not depend on which of
the two made a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")  # the tokenizer outputs a forward pass takes

Plan = Callable[[list[int]], list[tuple[int, int]]]  # ascending lengths -> half-open (start, end) cuts


def length_batches(lengths: Sequence[int], batch_size: int | None = None, plan: Plan | None = None) -> list[np.ndarray]:
    """Rows ordered by length and cut into batches.

    Args:
        lengths: one length per row (characters or tokens: whatever the caller pads by).
        batch_size: at most this many rows per batch (consecutive in length order).
        plan: instead of ``batch_size``, a function from the ascending lengths (a list of ints) to
            half-open ``(start, end)`` ranges over them, covering ``0..n`` in order.

    Returns:
        One int64 array of row indices (into ``lengths``) per batch, each ascending in length; ties
        keep input order (stable sort). Together they hold every row once. ``[]`` for no rows.

    Raises:
        ValueError: neither or both of ``batch_size`` and ``plan`` are given, or ``batch_size < 1``.
    """
    if (batch_size is None) == (plan is None):
        raise ValueError("give exactly one of batch_size and plan")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    if plan is not None:
        ranges = plan(lengths[order].tolist())
    elif batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    else:
        ranges = [(start, start + batch_size) for start in range(0, len(order), batch_size)]
    return [order[start:end] for start, end in ranges]


def run_batched(batches: Sequence[np.ndarray], run: Callable[[np.ndarray], Any], out: np.ndarray | MutableSequence) -> Any:
    """Call ``run`` on each batch and put its rows back in input order.

    Args:
        batches: row indices per batch (from :func:`length_batches`).
        run: from one batch's indices to its results, one per index in the same order: an array
            whose first axis is the batch, or any sequence.
        out: the result holder, one slot per input row: an array (``out[idx] = run(idx)``) or a
            list (row by row).

    Returns:
        ``out``, filled.
    """
    for idx in batches:
        result = run(idx)
        if isinstance(out, np.ndarray):
            out[idx] = result
        else:
            for i, value in zip(idx, result):
                out[i] = value
    return out


def pad_rows(rows: Sequence[Sequence[int]], length: int, value: int, left: bool = False) -> np.ndarray:
    """Rows of ints padded with ``value`` to ``length``: int64 array ``(len(rows), length)``.

    Args:
        rows: the rows, none longer than ``length``.
        length: the padded width.
        value: the pad value.
        left: pad on the left (the row ends at the last column) instead of the right.
    """
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, row in enumerate(rows):
        if left:
            out[i, length - len(row):] = row
        else:
            out[i, : len(row)] = row
    return out


@dataclass(frozen=True)
class TokenRows:
    """Unpadded token rows of n texts, ready to be padded batch by batch.

    Attributes:
        columns: column name (``input_ids``, ``attention_mask``, ...) -> one list of ints per text.
        pad_values: column name -> its pad value; only these columns go into a batch.
        left: pad on the left (the tokenizer's ``padding_side == "left"``).
    """

    columns: Mapping[str, Sequence[Sequence[int]]]
    pad_values: Mapping[str, int]
    left: bool = False

    @property
    def lengths(self) -> list[int]:
        """Tokens per text (of ``input_ids``)."""
        return [len(row) for row in self.columns["input_ids"]]

    def batch(self, idx: Sequence[int], device: str = "cpu") -> dict[str, Any]:
        """The rows ``idx`` padded to the longest of them: ``{column: int64 tensor (len(idx), longest)}`` on ``device``."""
        import torch

        rows = {key: [self.columns[key][i] for i in idx] for key in self.columns if key in self.pad_values}
        longest = max(len(row) for row in rows["input_ids"])
        return {key: torch.from_numpy(pad_rows(value, longest, self.pad_values[key], self.left)).to(device)
                for key, value in rows.items()}


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenRows:
    """Tokenise ``texts`` once, unpadded and truncated to ``max_length`` tokens.

    Args:
        tokenizer: a Hugging Face tokenizer; its pad token id (0 when it has none), pad token type
            id and padding side are the pad values, as its own ``padding=True`` would use.
        texts: the texts.
        max_length: tokens kept per text (special tokens included).
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    pad_values = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0,
                  "token_type_ids": tokenizer.pad_token_type_id}
    return TokenRows({key: enc[key] for key in enc.keys() if key in PAD_COLUMNS}, pad_values,
                     tokenizer.padding_side == "left")


def token_rows(input_ids: Sequence[Sequence[int]], pad_id: int = 0) -> TokenRows:
    """Already tokenised rows, padded on the right with ``pad_id``; the attention mask marks each row's tokens."""
    return TokenRows({"input_ids": input_ids, "attention_mask": [[1] * len(row) for row in input_ids]},
                     {"input_ids": pad_id, "attention_mask": 0})
