"""Progress that a person can read, on a terminal and in a log file.

On a terminal, progress bars redraw in place (tqdm, through the Trainer). Anywhere else (CI, a
piped command, ``serve-*.log``, ``monitor.log``, the demo's subprocesses) a bar would write one
carriage-return update per step, thousands of them per run. There, bars are off and
:class:`tuneloop.training.progress_lines.ProgressLines` writes one plain line at most every :data:`LOG_EVERY_S` seconds instead.
The libraries' own bars (model loading, ``datasets.map``) follow the same rule through
:data:`QUIET_BARS_ENV`, set by the console script when stderr is not a terminal and given to every
child process whose output goes to a log file.
"""

from __future__ import annotations

import sys
from typing import IO

LOG_EVERY_S = 10.0  # a line per 10 s: ~20 lines for the 3-minute quick preset, readable in a log


def on_terminal(stream: IO | None = None) -> bool:
    """True when ``stream`` (default ``sys.stderr``, where bars draw) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or a stream-like object without isatty
        return False


# The public switches of huggingface_hub (read by transformers for its weight-loading bar too) and
# datasets (``map``, ``filter``); environment variables, so that child processes follow them.
QUIET_BARS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``8.4`` -> ``"8s"``."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
