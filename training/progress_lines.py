"""The Trainer callback behind readable training logs off a terminal (see :mod:`tuneloop.training.progress`)."""

from __future__ import annotations

import sys
import time
from typing import IO

from transformers import TrainerCallback

from tuneloop.training.progress import LOG_EVERY_S, format_duration


class ProgressLines(TrainerCallback):
    """A Trainer callback that writes ``train: step 120/300 (40%), epoch 1.20/3, loss 0.5312, 24s
    elapsed, ~36s left`` at most every ``every_s`` seconds, plus one line at the end.

    Args:
        stream: where to write (default ``sys.stderr``, read at each write).
        every_s: smallest gap between two lines, in seconds.
        label: the line's prefix.
    """

    def __init__(self, stream: IO | None = None, every_s: float = LOG_EVERY_S, label: str = "train") -> None:
        self.stream, self.every_s, self.label = stream, every_s, label
        self.started = self.last = 0.0
        self.loss: float | None = None
        self.lines = 0

    def _write(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(f"{self.label}: {text}\n")
        stream.flush()
        self.lines += 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last = time.monotonic()
        self._write(f"{state.max_steps} steps, {args.num_train_epochs:g} epochs")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if now - self.last < self.every_s or not state.max_steps:
            return
        self.last = now
        done = state.global_step / state.max_steps
        elapsed = now - self.started
        left = elapsed * (1 - done) / done if done > 0 else float("nan")
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        self._write(f"step {state.global_step}/{state.max_steps} ({done:.0%}), epoch {state.epoch or 0:.2f}/"
                    f"{args.num_train_epochs:g}{loss}, {format_duration(elapsed)} elapsed, "
                    f"~{format_duration(left)} left")

    def on_train_end(self, args, state, control, **kwargs):
        self._write(f"done: {state.global_step} steps in {format_duration(time.monotonic() - self.started)}")
