"""Progress off a terminal: plain lines at most every few seconds, never carriage-return redraws."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import SimpleNamespace

from conftest import write_tiny_model


def test_progress_lines_are_throttled_and_readable(monkeypatch):
    from tuneloop.training import progress_lines
    from tuneloop.training.progress_lines import ProgressLines

    clock = [100.0]
    monkeypatch.setattr(progress_lines.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    cb = ProgressLines(stream=out, every_s=10.0)
    args = SimpleNamespace(num_train_epochs=3)
    state = SimpleNamespace(max_steps=300, global_step=0, epoch=0.0)
    cb.on_train_begin(args, state, None)
    for step in range(1, 301):  # one step per second: 300 s of training
        clock[0] += 1.0
        state.global_step, state.epoch = step, step / 100
        if step % 50 == 0:
            cb.on_log(args, state, None, logs={"loss": 3.0 / step})
        cb.on_step_end(args, state, None)
    cb.on_train_end(args, state, None)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 1 + 30 + 1  # begin, one per 10 s, end
    assert lines[0] == "train: 300 steps, 3 epochs"
    assert lines[1] == "train: step 10/300 (3%), epoch 0.10/3, 10s elapsed, ~4m50s left"
    assert lines[10] == "train: step 100/300 (33%), epoch 1.00/3, loss 0.0300, 1m40s elapsed, ~3m20s left"
    assert lines[-1] == "train: done: 300 steps in 5m00s"


def test_on_terminal_is_false_for_files_and_pipes(tmp_path):
    from tuneloop.training.progress import on_terminal

    with open(tmp_path / "log", "w") as fh:
        assert not on_terminal(fh)
    assert not on_terminal(io.StringIO())


def test_train_piped_to_a_file_writes_lines_not_bars(tmp_path, tiny_data):
    """The real console script with stderr in a file, as in CI or the demo's logs."""
    base = tmp_path / "base"
    write_tiny_model(base, labels=["a", "b"])
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "tuneloop.apps.cli", "train", "--data", str(tiny_data),
                               "--home", str(tmp_path / "home"), "--preset", "quick", "--set", f"base_model={base}",
                               "--set", "epochs=2", "--set", "batch_size=8"],
                              stdout=log, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "TUNELOOP_HOME": str(tmp_path / "home")})
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text, text[-3000:]
    assert "it/s]" not in text and "Loading weights" not in text  # no tqdm bar of ours or the libraries'
    lines = [line for line in text.splitlines() if line.startswith("train: ")]
    assert lines[0].endswith("epochs") and lines[-1].startswith("train: done:"), text[-3000:]
