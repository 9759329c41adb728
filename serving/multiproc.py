"""Prometheus metrics across worker processes: what prometheus_client's multiprocess mode cannot
do by itself, done here.

Under ``bentoml serve`` each worker process writes its metric values to memory-mapped files in
``$PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (answered by any worker) merges every file with
``MultiProcessCollector``: counters and histograms are summed over workers, gauges merge as their
``multiprocess_mode`` says (see :mod:`tuneloop.serving.metrics`). BentoML points the variable at
``$BENTOML_HOME/prometheus_multiproc_dir`` and empties that folder when the server starts, so
replicas on one machine need a ``BENTOML_HOME`` each (:func:`tuneloop.serving.launch.serve_env`
gives every server its own; the model store is read through ``TUNELOOP_HOME``, not BentoML's).

Limits of the multiprocess mode, and how they are handled:

* no custom collectors, no ``Info``/``Enum``: the live model's tag is the label of a 0/1 gauge
  (``tuneloop_model_live{tag, worker}``), one series per worker, since workers swap one at a time;
* ``live*`` gauges drop a process's values only when ``mark_process_dead(pid)`` is called;
  BentoML calls it when a worker exits cleanly, nobody when a worker is killed (circus restarts
  it with the same index). :func:`forget_dead_workers`, run by every worker as it starts,
  drops the live gauges of processes that no longer exist, so a killed worker's in-flight
  requests and live tag vanish once its replacement starts.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("bentoml.service.tuneloop")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client names a live gauge's file `gauge_<mode>_<pid>.db` (values.py; the same
# pattern its mark_process_dead removes).
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiproc_dir() -> Path | None:
    """``$PROMETHEUS_MULTIPROC_DIR`` when it names an existing folder, else None (single process)."""
    value = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(value) if value and os.path.isdir(value) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (Linux/macOS: signal 0; a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def forget_dead_workers(path: Path | None = None) -> list[int]:
    """Drop the ``live*`` gauge values of processes that no longer run (prometheus_client's
    public ``multiprocess.mark_process_dead``), so ``/metrics`` stops showing them.

    Args:
        path: the multiprocess folder; None: ``$PROMETHEUS_MULTIPROC_DIR`` (nothing to do when
            it is unset: one process, one registry).

    Returns:
        The process ids forgotten, ascending (empty when every writer is alive).
    """
    folder = path if path is not None else multiproc_dir()
    if folder is None or not folder.is_dir():
        return []
    from prometheus_client import multiprocess

    me = os.getpid()
    dead = sorted({
        pid for name in os.listdir(folder) if (match := _LIVE_GAUGE_FILE.fullmatch(name))
        and (pid := int(match.group(1))) != me and not pid_alive(pid)
    })
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    if dead:
        log.info("forgot the live gauges of %d dead worker process(es): %s", len(dead), dead)
    return dead
