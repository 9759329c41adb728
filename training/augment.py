"""Seeded text noise: keyboard typos, as real users make them.

Noise model (documented because the demo's drift phase and its benchmarks depend on it): each
letter of a text is hit with probability ``rate``; a hit letter gets one of four edits with equal
probability -- replaced by a neighbouring key on a QWERTY keyboard, deleted, doubled, or swapped
with the next character. A text always receives at least one edit when it has a letter. The same
``random.Random`` state gives the same output.
"""

from __future__ import annotations

import random

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
