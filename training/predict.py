"""The saved model format, loaded for inference: tokenizer + sequence classifier + label list.

A model folder (a BentoML model version, or any ``save_pretrained`` folder) holds
``config.json`` (with ``id2label``), ``model.safetensors`` and the tokenizer files. Weights load
only from safetensors (``use_safetensors=True``): a pickled ``pytorch_model.bin`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_LENGTH = 64  # Banking77: 99% of queries are <= 53 tokens (measured on train.csv)


def pick_device() -> str:
    """``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Classifier:
    """A loaded text classifier.

    Attributes:
        tokenizer: a fast Hugging Face tokenizer.
        model: an ``AutoModelForSequenceClassification`` in eval mode on ``device``.
        labels: label names, index i is the model's output i.
        device: ``"cpu"`` or ``"cuda"``.
        max_length: tokens kept per text (longer texts are truncated).
    """

    tokenizer: Any
    model: Any
    labels: list[str]
    device: str = "cpu"
    max_length: int = DEFAULT_MAX_LENGTH

    @classmethod
    def load(cls, path: Path | str, device: str | None = None, max_length: int = DEFAULT_MAX_LENGTH) -> "Classifier":
        """Load a model folder. On CUDA the weights are cast to bf16.

        Raises:
            FileNotFoundError: the folder has no ``model.safetensors`` (pickled weights are refused).
        """
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"{path} has no *.safetensors weights; tuneloop loads weights only from safetensors")
        hf_logging.set_verbosity_error()
        device = device or pick_device()
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, dtype=dtype)
        model.to(device).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return cls(tokenizer=tokenizer, model=model, labels=labels, device=device, max_length=max_length)

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``, float32, rows sum to 1.

        Texts are sorted by length and batched so that padding stays short; the output is in the
        input order.
        """
        import torch

        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                out[idx] = logits.softmax(-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> tuple[list[str], np.ndarray]:
        """Predicted label names and their confidences (max probability), shape ``(n,)``."""
        proba = self.predict_proba(texts, batch_size=batch_size)
        idx = proba.argmax(axis=1)
        return [self.labels[i] for i in idx], proba[np.arange(len(idx)), idx]
