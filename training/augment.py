"""Seeded text noise and training-data augmentation.

Keyboard typos, as real users make them (the demo's drift phase uses the same model).

Noise model (documented because the demo's drift phase and its benchmarks depend on it): each
letter of a text is hit with probability ``rate``; a hit letter gets one of four edits with equal
probability -- replaced by a neighbouring key on a QWERTY keyboard, deleted, doubled, or swapped
with the next character. A text always receives at least one edit when it has a letter. The same
``random.Random`` state gives the same output.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pandas as pd

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    """Letters adjacent on a QWERTY keyboard (same row left/right, rows above/below at the same and next column)."""
    pos = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():
        near = []
        for dr, di in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, 0), (1, -1)):
            rr, ii = r + dr, i + di
            if 0 <= rr < len(_ROWS) and 0 <= ii < len(_ROWS[rr]):
                near.append(_ROWS[rr][ii])
        out[c] = "".join(near)
    return out


NEIGHBOURS = _neighbours()
DEFAULT_TYPO_RATE = 0.05  # ~1 edit per 20 letters: a Banking77 query (median 55 chars) gets 2-3


def keyboard_typos(text: str, rng: random.Random, rate: float = DEFAULT_TYPO_RATE) -> str:
    """Return ``text`` with seeded keyboard typos (see the module docstring for the model).

    Args:
        text: input text.
        rng: the random source (seed it for reproducibility).
        rate: probability that a letter is edited, 0..1.

    Raises:
        ValueError: ``rate`` outside [0, 1].
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    letters = [i for i, ch in enumerate(text) if ch.lower() in NEIGHBOURS]
    if not letters:
        return text
    hits = {i for i in letters if rng.random() < rate} or {rng.choice(letters)}
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch = chars[i]
        if i not in hits:
            out.append(ch)
            i += 1
            continue
        edit = rng.randrange(4)
        if edit == 0:  # neighbouring key, keeping the case
            sub = rng.choice(NEIGHBOURS[ch.lower()])
            out.append(sub.upper() if ch.isupper() else sub)
        elif edit == 1:  # deletion
            pass
        elif edit == 2:  # doubled key
            out.extend([ch, ch])
        elif i + 1 < len(chars):  # transposition with the next character
            out.extend([chars[i + 1], ch])
            i += 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def char_swaps(text: str, rng: random.Random, swaps: int = 1) -> str:
    """Swap ``swaps`` pairs of adjacent letters inside words (seeded)."""
    chars = list(text)
    spots = [i for i in range(len(chars) - 1) if chars[i].isalpha() and chars[i + 1].isalpha()]
    for i in rng.sample(spots, min(swaps, len(spots))):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def word_dropout(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Drop each word with probability ``rate``, keeping at least one word."""
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or [rng.choice(words)]) if words else text


# A small offline synonym table for customer-support language (no WordNet download at run time).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "card": ("debit card", "bank card"), "money": ("funds", "cash"), "account": ("bank account",),
    "cancel": ("stop", "call off"), "transfer": ("payment", "transaction"), "received": ("got", "gotten"),
    "arrive": ("come", "get here"), "arrived": ("come", "shown up"), "help": ("assist", "support"),
    "want": ("would like", "need"), "need": ("want", "require"), "why": ("how come",), "charged": ("billed",),
    "fee": ("charge", "cost"), "refund": ("reimbursement", "money back"), "lost": ("misplaced",),
    "stolen": ("taken", "robbed"), "pin": ("PIN code",), "check": ("see", "verify"), "wrong": ("incorrect",),
    "still": ("yet",), "declined": ("rejected", "refused"), "top": ("load",), "change": ("update", "modify"),
    "problem": ("issue", "trouble"), "quickly": ("fast", "soon"), "order": ("request",), "use": ("utilise",),
    "buy": ("purchase",), "get": ("obtain", "receive"), "show": ("display",), "cash": ("money",),
}


def synonym_replace(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """Replace each word found in :data:`SYNONYMS` with a synonym with probability ``rate`` (case kept for the first letter)."""
    out = []
    for word in text.split():
        core = word.strip(".,?!").lower()
        if core in SYNONYMS and rng.random() < rate:
            sub = rng.choice(SYNONYMS[core])
            sub = sub[0].upper() + sub[1:] if word[:1].isupper() else sub
            word = word.lower().replace(core, sub, 1) if word.lower() != word else word.replace(core, sub, 1)
        out.append(word)
    return " ".join(out)


class AugmentConfig(BaseModel):
    """Augmentation of the training split only (never validation or test). Each enabled method
    adds one new row per sampled training row; ``share`` of the training rows are sampled per method."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(0.0, ge=0, le=5, description="Rows added per method, as a share of the training rows (0: off).")
    methods: list[Literal["typos", "char_swaps", "word_dropout", "synonyms", "paraphrase", "back_translation"]] = Field(
        default_factory=lambda: ["typos", "synonyms"], description="Methods applied when share > 0.")
    typo_rate: float = Field(DEFAULT_TYPO_RATE, ge=0, le=1, description="Per-letter typo probability.")
    word_dropout_rate: float = Field(0.1, ge=0, lt=1, description="Per-word dropout probability.")
    paraphrase_model: str | None = Field(None, description="Local seq2seq model folder that paraphrases a text.")
    back_translation_models: tuple[str, str] | None = Field(
        None, description="Two local seq2seq folders: to the pivot language and back.")
    seed: int = Field(0, description="Seed of the sampling and of every edit.")


def _seq2seq(model_dir: str, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Generate one output per text with a local seq2seq model (greedy decoding, no download)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, use_safetensors=True).eval()
    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=128)
            gen = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_new_tokens, do_sample=False)
            out.extend(tok.batch_decode(gen, skip_special_tokens=True))
    return out


def augment(train: pd.DataFrame, cfg: AugmentConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Augmented training frame (originals first) and the rows each method produced.

    Args:
        train: the training split, columns ``text``, ``label`` (other columns, such as generation's
            ``reply``, are copied onto the rows made from each text).
        cfg: what to add; the same ``cfg.seed`` gives the same rows.

    Returns:
        (frame with the original and the new rows, ``{method: rows added}``). Empty outputs and
        outputs equal to their source are dropped.

    Raises:
        ValueError: paraphrase/back_translation is enabled without a model folder.
    """
    import pandas as pd

    if cfg.share <= 0 or not cfg.methods:
        return train, {}
    rng = random.Random(cfg.seed)
    n = max(1, int(round(cfg.share * len(train))))
    added, counts = [], {}
    for method in cfg.methods:
        rows = train.sample(n=n, replace=n > len(train), random_state=rng.randrange(2**31))
        texts = rows["text"].tolist()
        if method == "typos":
            new = [keyboard_typos(t, rng, cfg.typo_rate) for t in texts]
        elif method == "char_swaps":
            new = [char_swaps(t, rng) for t in texts]
        elif method == "word_dropout":
            new = [word_dropout(t, rng, cfg.word_dropout_rate) for t in texts]
        elif method == "synonyms":
            new = [synonym_replace(t, rng) for t in texts]
        elif method == "paraphrase":
            if not cfg.paraphrase_model:
                raise ValueError("augmentation 'paraphrase' needs paraphrase_model (a local seq2seq model folder)")
            new = _seq2seq(cfg.paraphrase_model, texts)
        else:
            if not cfg.back_translation_models:
                raise ValueError("augmentation 'back_translation' needs back_translation_models (two local folders)")
            new = _seq2seq(cfg.back_translation_models[1], _seq2seq(cfg.back_translation_models[0], texts))
        # every other column (the label; generation's reference reply) goes with its noisy text
        frame = rows.reset_index(drop=True).assign(text=new, _source=texts)
        frame = frame[(frame["text"].str.strip() != "") & (frame["text"] != frame["_source"])]
        counts[method] = len(frame)
        added.append(frame[list(train.columns)])
    return pd.concat([train, *added], ignore_index=True), counts
