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
QUANTIZE_MODES = (None, "none", "int8", "bf16")


def pick_device() -> str:
    """``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Classifier:
    """A loaded text classifier.

    Attributes:
        tokenizer: a fast Hugging Face tokenizer.
        model: an ``AutoModelForSequenceClassification`` in eval mode on ``device``; its logits
            come from :func:`tuneloop.training.heads.forward_logits` (the pooling it was trained with).
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
    def load(
        cls, path: Path | str, device: str | None = None, max_length: int = DEFAULT_MAX_LENGTH,
        quantize: str | None = None,
    ) -> Classifier:
        """Load a model folder. On CUDA the weights are cast to bf16.

        Args:
            path: the model folder.
            device: ``"cpu"`` or ``"cuda"``; None picks CUDA when available.
            max_length: tokens kept per text.
            quantize: ``"int8"``: dynamic int8 quantisation of every ``nn.Linear`` (weights int8,
                activations quantised per batch), a CPU-only inference speed-up; forces
                ``device="cpu"``. ``"bf16"``: weights in bfloat16 (fast on CPUs with native bf16
                and on GPUs). None or ``"none"``: the weights as saved (bf16 on CUDA).

        Raises:
            FileNotFoundError: the folder has no ``model.safetensors`` (pickled weights are refused).
            ValueError: ``quantize`` is not None, ``"none"`` or ``"int8"``.
        """
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"{path} has no *.safetensors weights; tuneloop loads weights only from safetensors")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize={quantize!r}: use one of {QUANTIZE_MODES}")
        hf_logging.set_verbosity_error()
        device = "cpu" if quantize == "int8" else (device or pick_device())
        dtype = torch.bfloat16 if device == "cuda" or quantize == "bf16" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, dtype=dtype)
        model.to(device).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        clf = cls(tokenizer=tokenizer, model=model, labels=labels, device=device, max_length=max_length)
        if quantize == "int8":
            import warnings

            from tuneloop.training.quantize import quantize_int8  # imports this module: imported here, not at the top

            with warnings.catch_warnings():  # torch 2.13 deprecation notices of torch.ao, once per load
                warnings.simplefilter("ignore")
                clf = quantize_int8(clf)
        return clf

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``, float32, rows sum to 1.

        Texts are sorted by length (characters) and cut into batches of ``batch_size``
        (:mod:`tuneloop.training.batching`) so that padding stays short; the output is in the
        input order.
        """
        import torch

        from tuneloop.training.batching import encode_texts, length_batches, run_batched
        from tuneloop.training.heads import forward_logits

        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        rows = encode_texts(self.tokenizer, texts, self.max_length)

        def run(idx: np.ndarray) -> np.ndarray:
            return forward_logits(self.model, **rows.batch(idx, self.device)).float().softmax(-1).cpu().numpy()

        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            return run_batched(length_batches([len(t) for t in texts], batch_size=batch_size), run, out)

    def predict(self, texts: list[str], batch_size: int = 64) -> tuple[list[str], np.ndarray]:
        """Predicted label names and their confidences (max probability), shape ``(n,)``."""
        proba = self.predict_proba(texts, batch_size=batch_size)
        idx = proba.argmax(axis=1)
        return [self.labels[i] for i in idx], proba[np.arange(len(idx)), idx]
