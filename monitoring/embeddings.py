"""The champion's own sentence embeddings of traffic texts, for the embedding drift signal and the
labelling queue.

Live traffic rows carry no embeddings, so the monitor embeds each window's texts itself with the
champion: the encoder under the classification head (``model.base_model``), last hidden state
mean-pooled over the attention mask (:func:`tuneloop.training.heads.mean_pool`, the classifier's own
mean pooling) and L2-normalised, as sentence-transformers does for
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
    """The encoder's last hidden states, mean-pooled (:func:`tuneloop.training.heads.mean_pool`) and
    L2-normalised, batched by length in characters (:mod:`tuneloop.training.batching`)."""
    import torch

    from tuneloop.training.batching import encode_texts, length_batches, run_batched
    from tuneloop.training.heads import mean_pool

    texts = [str(t) for t in texts]
    rows = encode_texts(classifier.tokenizer, texts, classifier.max_length)

    def run(idx: np.ndarray) -> np.ndarray:
        batch = rows.batch(idx, classifier.device)
        states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = mean_pool(states, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    with torch.inference_mode():
        return run_batched(length_batches([len(t) for t in texts], batch_size=batch_size), run,
                           np.empty((len(texts), hidden), dtype=np.float32))


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


SENTENCE_ENCODER_MAX_LENGTH = 128  # tokens kept per prompt: all-MiniLM-L6-v2 was trained on up to 128 tokens


def load_sentence_encoder(path: str | None = None, device: str = "cpu", max_length: int = SENTENCE_ENCODER_MAX_LENGTH):
    """A sentence encoder that :func:`embed_texts` takes in place of a classifier: the shipped
    all-MiniLM-L6-v2 (``tuneloop.training.model.default_base_model()``) without a head, for models that
    have no encoder of their own to embed traffic with (generation embeds its prompts with it).

    Args:
        path: a ``save_pretrained`` encoder folder with safetensors weights; None: the shipped MiniLM.
        device: ``"cpu"`` or ``"cuda"``.
        max_length: tokens kept per text.

    Returns:
        A :class:`tuneloop.training.predict.Classifier` whose ``model`` is the bare encoder (an
        ``AutoModel``, its own ``base_model``) and whose ``labels`` are empty: use it for embeddings only.
    """
    from transformers import AutoModel, AutoTokenizer

    from tuneloop.training.model import default_base_model
    from tuneloop.training.predict import Classifier

    folder = path or default_base_model()
    model = AutoModel.from_pretrained(folder, use_safetensors=True).to(device).eval()
    return Classifier(tokenizer=AutoTokenizer.from_pretrained(folder), model=model, labels=[], device=device,
                      max_length=max_length)
