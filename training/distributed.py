"""Data-parallel training: the command re-run under ``torchrun``, the Trainer's DDP doing the work.

``tuneloop train --nproc N`` (and ``tuneloop retrain --nproc N``) does not train itself: it runs
:func:`relaunch`, i.e. ``python -m torch.distributed.run --standalone --nproc_per_node N -m
tuneloop.apps.cli <the same arguments without --nproc>``. Each of the N processes then runs the
ordinary command; the Hugging Face ``Trainer`` sees torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
wraps the model in ``DistributedDataParallel`` (backend :func:`ddp_backend`: ``gloo`` on CPU,
``nccl`` on CUDA) and gives each rank its own share of every epoch's batches; gradients are averaged,
so every rank ends with the same weights. After training (the best epoch restored from the shared
checkpoint folder, :func:`trainer_dir`) :func:`leave_unless_main` ends ranks 1..N-1 with exit code 0,
and rank 0 alone evaluates, saves the model version and promotes.

Debugging aid (tests): with ``$TUNELOOP_DDP_TRACE`` naming a folder, every rank appends the examples
of each batch it collates to ``rank<r>-examples.jsonl`` (:func:`trace_collator`) and writes a checksum
of its trained parameters to ``rank<r>-params.json`` (:func:`trace_parameters`).

Larger models on GPUs use the same launcher; the Trainer reads FSDP or DeepSpeed from its arguments
(``TrainingArguments.fsdp`` / ``fsdp_config``, or ``deepspeed=<ds_config.json>``), which ``--set`` does not
reach today; see ``tuneloop train --help``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TRACE_ENV = "TUNELOOP_DDP_TRACE"
CLI_MODULE = "tuneloop.apps.cli"
_trainer_dirs = itertools.count()  # the n-th trainer folder of a process: the same n on every rank


def world_size() -> int:
    """Processes in this run (torchrun's ``$WORLD_SIZE``; 1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``$RANK``; 0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True inside a torchrun launch of more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, and in every run that is not distributed."""
    return rank() == 0


def ddp_backend(device: str) -> str | None:
    """The ``TrainingArguments.ddp_backend`` for ``device``: ``gloo`` on ``cpu``, ``nccl`` on ``cuda``,
    None (the Trainer's choice) otherwise and whenever the run is not distributed."""
    if not is_distributed():
        return None
    return {"cpu": "gloo", "cuda": "nccl"}.get(device)


def local_device(device: str) -> str:
    """``device`` for work done outside the Trainer on this rank: ``cuda:<LOCAL_RANK>`` for ``cuda`` in a
    distributed run (each rank has its own GPU), else ``device`` unchanged."""
    if device == "cuda" and is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def strip_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (e.g. ``--nproc 2``), everything else in order."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def check_devices(nproc: int) -> None:
    """Check that ``nproc`` processes can each have a device: on a machine with CUDA GPUs, one GPU per
    process (NCCL refuses two ranks on one GPU); on CPU any number (gloo).

    Raises:
        ValueError: more processes than GPUs (the message says how many there are).
    """
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} but {torch.cuda.device_count()} GPU(s): data-parallel training on GPUs "
                         "takes one GPU per process")


def launch_command(args: list[str], nproc: int) -> list[str]:
    """The torchrun command line that runs ``tuneloop <args>`` in ``nproc`` processes on this machine.

    Raises:
        ValueError: ``nproc`` < 2.
    """
    if nproc < 2:
        raise ValueError(f"nproc={nproc}: a distributed launch needs at least 2 processes")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", CLI_MODULE, *args]


def relaunch(args: list[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run ``tuneloop <args>`` under torchrun in ``nproc`` processes and wait for it.

    Args:
        args: the command's arguments without the ``--nproc`` option (:func:`strip_option`).
        nproc: processes (each trains on 1/nproc of every epoch's batches).
        env: extra environment variables for the processes.

    Returns:
        torchrun's exit code (0 when every rank exited 0; torchrun stops all ranks when one fails).
    """
    return subprocess.run(launch_command(args, nproc), env={**os.environ, **(env or {})}, check=False).returncode


@contextmanager
def trainer_dir(prefix: str) -> Iterator[str]:
    """The Trainer's ``output_dir`` (its checkpoints), removed afterwards.

    Not distributed: a fresh temporary folder. Distributed: one folder every rank of the run names the
    same (from torchrun's ``$TORCHELASTIC_RUN_ID``), because rank 0 writes the checkpoints and every
    rank restores the best one from there; after a barrier rank 0 removes it.
    """
    if not is_distributed():
        with tempfile.TemporaryDirectory(prefix=prefix) as path:
            yield path
        return
    run = os.environ.get("TORCHELASTIC_RUN_ID") or f"{os.environ.get('MASTER_ADDR')}-{os.environ.get('MASTER_PORT')}"
    path = Path(tempfile.gettempdir()) / f"{prefix}ddp-{run}-{next(_trainer_dirs)}"
    path.mkdir(parents=True, exist_ok=True)
    yield str(path)
    _barrier()  # every rank has restored the best checkpoint
    if is_main_process():
        shutil.rmtree(path, ignore_errors=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_unless_main() -> None:
    """After distributed training: close the process group on every rank, then end ranks other than 0
    (``SystemExit(0)``: their ``finally`` blocks run, and torchrun sees a clean exit). Rank 0 returns and
    goes on alone (evaluation, saving, promotion). Does nothing when the run is not distributed."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if not is_main_process():
        raise SystemExit(0)


def _trace_path(kind: str) -> Path | None:
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"rank{rank()}-{kind}"


def example_fingerprint(example: dict) -> str:
    """A short id of one dataset item: SHA-256 (12 hex digits) of its cached frozen-layer
    ``hidden_states`` bytes when it has them (their ``input_ids`` is only a length), else of its ``input_ids``."""
    if "hidden_states" in example:
        data = example["hidden_states"].detach().cpu().float().numpy().tobytes()
    else:
        data = json.dumps([int(t) for t in example["input_ids"]]).encode()
    return hashlib.sha256(data).hexdigest()[:12]


def trace_collator(collator: Callable) -> Callable:
    """``collator`` itself, or with ``$TUNELOOP_DDP_TRACE`` set a wrapper that first appends the batch's
    example fingerprints (:func:`example_fingerprint`) as one JSON line to ``rank<r>-examples.jsonl``."""
    path = _trace_path("examples.jsonl")
    if path is None:
        return collator

    def traced(features: list[dict]):
        with open(path, "a") as fh:
            fh.write(json.dumps([example_fingerprint(f) for f in features]) + "\n")
        return collator(features)

    return traced


def parameter_checksum(model) -> str:
    """SHA-256 of every parameter's name and float32 bytes, in ``named_parameters`` order."""
    import torch

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().to(dtype=torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def trace_parameters(model) -> None:
    """With ``$TUNELOOP_DDP_TRACE`` set: write ``{"rank", "world_size", "sha256"}`` of ``model``'s
    parameters (:func:`parameter_checksum`) to ``rank<r>-params.json``; else nothing."""
    path = _trace_path("params.json")
    if path is not None:
        path.write_text(json.dumps({"rank": rank(), "world_size": world_size(), "sha256": parameter_checksum(model)}))
