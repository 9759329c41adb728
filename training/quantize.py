"""Dynamic int8 quantisation for CPU serving, and its measured cost and gain against fp32.

``torch.ao.quantization.quantize_dynamic`` replaces every ``nn.Linear`` with an int8-weight
version whose activations are quantised on the fly (PyTorch's dynamic quantisation tutorial for
BERT). The saved model stays fp32 safetensors; int8 is applied at load time (a quantised module
does not round-trip through safetensors), and its accuracy and speed are measured here.
"""

from __future__ import annotations

import copy
import time

from tuneloop.training.evaluate import classification_metrics
from tuneloop.training.predict import Classifier


def quantize_int8(clf: Classifier) -> Classifier:
    """A copy of ``clf`` with int8 dynamic quantisation of its Linear layers (CPU only).

    Raises:
        ValueError: ``clf`` is on a GPU (dynamic quantisation is a CPU technique).
    """
    import torch

    if clf.device != "cpu":
        raise ValueError("int8 dynamic quantisation runs on CPU; load the model with device='cpu'")
    model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(clf.model), {torch.nn.Linear}, dtype=torch.qint8)
    return Classifier(tokenizer=clf.tokenizer, model=model, labels=clf.labels, device="cpu", max_length=clf.max_length)


def _measure(clf: Classifier, texts: list[str], labels: list[str], batch_size: int) -> dict:
    clf.predict(texts[:batch_size])  # warm-up
    start = time.perf_counter()
    pred, _ = clf.predict(texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"accuracy": classification_metrics(labels, pred, per_class=False)["accuracy"],
            "texts_per_second": len(texts) / seconds, "seconds": seconds}


def compare_int8(clf: Classifier, texts: list[str], labels: list[str], batch_size: int = 64) -> dict:
    """Accuracy and throughput of fp32 vs int8 on the same texts, in one process.

    Returns:
        ``{"fp32": {...}, "int8": {...}, "accuracy_change": int8 - fp32, "speedup": int8/fp32}``
        with ``accuracy`` (0..1) and ``texts_per_second`` per variant.
    """
    fp32 = clf if clf.device == "cpu" else Classifier(clf.tokenizer, copy.deepcopy(clf.model).cpu(), clf.labels, "cpu",
                                                       clf.max_length)
    a = _measure(fp32, texts, labels, batch_size)
    b = _measure(quantize_int8(fp32), texts, labels, batch_size)
    return {"fp32": a, "int8": b, "accuracy_change": b["accuracy"] - a["accuracy"],
            "speedup": b["texts_per_second"] / a["texts_per_second"], "rows": len(texts)}
