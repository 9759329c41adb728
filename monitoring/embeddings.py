"""The champion's own sentence embeddings of traffic texts, for the embedding drift signal and the
labelling queue.

Live traffic rows carry no embeddings, so the monitor embeds each window's texts itself with the
champion: the encoder under the classification head (``model.base_model``), last hidden state
mean-pooled over the attention mask and L2-normalised, as sentence-transformers does for
all-MiniLM-L6-v2. The reference sample is embedded once per champion and cached in memory.
"""

from __future__ import annotations

import numpy as np


def embed_texts(classifier, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states.

    Args:
        classifier: a ``tuneloop.training.predict.Classifier`` (its tokenizer, model, device, max_length).
        texts: n texts.
        batch_size: texts per forward pass (texts are sorted by length so padding stays short).
        threads: torch intra-op threads for this call only (None: leave the process setting). On a
            shared 2-core machine 1 thread embedded 500 texts in 3.9 s and 2 threads in 10.3 s (load 7.6):
            threads that wait for each other lose more than they gain when the cores are busy.

    Returns:
        float32 array of shape (n, hidden_size); zeros of shape (0, hidden_size) for no texts.
    """
    import torch

    encoder = classifier.model.base_model
    hidden = int(classifier.model.config.hidden_size)
    if not texts:
        return np.zeros((0, hidden), dtype=np.float32)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _embed(classifier, encoder, texts, batch_size, hidden)
    finally:
        torch.set_num_threads(previous)


def _embed(classifier, encoder, texts: list[str], batch_size: int, hidden: int) -> np.ndarray:
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), hidden), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = classifier.tokenizer([str(texts[i]) for i in idx], padding=True, truncation=True,
                                       max_length=classifier.max_length, return_tensors="pt").to(classifier.device)
            states = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
    return out


def novelty(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Per current row: 1 - cosine similarity to its nearest reference row (0 = a reference text).

    Args:
        reference: L2-normalised embeddings, shape (n_ref, d).
        current: L2-normalised embeddings, shape (n_cur, d).

    Returns:
        shape (n_cur,), 0..2.
    """
    if len(current) == 0 or len(reference) == 0:
        return np.zeros(len(current))
    return 1.0 - (current @ reference.T).max(axis=1)
