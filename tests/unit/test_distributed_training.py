"""Data-parallel training on CPU: `tuneloop train --nproc 2` runs two torchrun processes (gloo) on a tiny
random BERT; each rank collates its own share of the training examples, both end with identical
parameters, and rank 0 alone saves one model version (the champion). The ranks' examples and
parameter checksums come from the $TUNELOOP_DDP_TRACE debug files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tuneloop.training.distributed import check_devices, example_fingerprint, launch_command, strip_option

BATCH = 4


def test_the_launch_command_is_torchrun_standalone_on_the_same_cli():
    cmd = launch_command(["train", "--config", "c.yaml"], 2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--standalone", "--nproc_per_node=2", "-m", "tuneloop.apps.cli", "train", "--config", "c.yaml"]
    assert strip_option(["train", "--nproc", "2", "--data", "d", "--nproc=3"], "--nproc") == ["train", "--data", "d"]
    with pytest.raises(ValueError, match="at least 2"):
        launch_command(["train"], 1)
    import torch

    if not torch.cuda.is_available():  # on CPU (gloo) any number of processes may share the cores
        check_devices(64)


def _examples(trace, rank: int) -> list[str]:
    lines = (trace / f"rank{rank}-examples.jsonl").read_text().splitlines()
    return [fp for line in lines for fp in json.loads(line)]


@pytest.mark.timeout(300)
def test_train_nproc_2_splits_batches_and_saves_one_model(tmp_path, tiny_data, tiny_base):
    from transformers import AutoTokenizer

    from tuneloop.state.home import Home
    from tuneloop.state.registry import read_champion
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.data import load_splits_for

    home, trace = tmp_path / "home", tmp_path / "trace"
    cmd = [sys.executable, "-m", "tuneloop.apps.cli", "train", "--data", str(tiny_data), "--base-model", str(tiny_base),
           "--method", "full", "--epochs", "1", "--batch-size", str(BATCH), "--home", str(home), "--nproc", "2"]
    run = subprocess.run(cmd, env={**os.environ, "TUNELOOP_DDP_TRACE": str(trace)}, capture_output=True, text=True,
                         timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1 and "(champion)" in run.stdout, run.stdout  # rank 0 alone saved

    params = [json.loads((trace / f"rank{r}-params.json").read_text()) for r in (0, 1)]
    assert [p["rank"] for p in params] == [0, 1] and {p["world_size"] for p in params} == {2}
    assert params[0]["sha256"] == params[1]["sha256"]  # DDP kept the replicas identical

    cfg = TrainConfig.for_preset("full", data=str(tiny_data), base_model=str(tiny_base), method="full", epochs=1,
                                 batch_size=BATCH)  # what the command line made
    splits = load_splits_for(cfg)  # the same seeded split the ranks made
    tok = AutoTokenizer.from_pretrained(tiny_base)

    def fingerprints(texts) -> set[str]:
        ids = tok(list(texts), truncation=True, max_length=cfg.max_length)["input_ids"]
        return {example_fingerprint({"input_ids": i}) for i in ids}

    train_fps, val_fps = fingerprints(splits.train["text"]), fingerprints(splits.validation["text"])
    seen = [_examples(trace, r) for r in (0, 1)]
    assert all(set(s) <= train_fps | val_fps for s in seen)  # every collated example is a training or validation row
    trained = [[fp for fp in s if fp in train_fps] for s in seen]
    assert set(trained[0]) | set(trained[1]) == train_fps  # one epoch covers the training split...
    assert len(set(trained[0]) & set(trained[1])) < 2 * BATCH  # ...split between the ranks (only the padding of
    # the last round of batches repeats examples), each rank taking half of it
    assert abs(len(trained[0]) - len(trained[1])) <= BATCH and len(trained[0]) >= len(train_fps) // 2

    versions = [p for p in Home(home).models_dir.glob("*/*") if p.is_dir()]
    assert len(versions) == 1 and read_champion(Home(home)).tag.split(":")[1] == versions[0].name


@pytest.mark.timeout(300)
def test_train_nproc_2_fine_tunes_a_generator_the_same_way(tmp_path, tiny_llm):
    """The generation task (TRL's SFTTrainer) under the same launcher: identical replicas, the ranks'
    examples apart, one model version saved by rank 0."""
    from test_generation_training import write_pairs

    from tuneloop.state.home import Home

    home, trace = tmp_path / "home", tmp_path / "trace"
    cmd = [sys.executable, "-m", "tuneloop.apps.cli", "train", "--task", "generation", "--preset", "quick",
           "--data", str(write_pairs(tmp_path / "data")), "--prompt-column", "instruction", "--base-model", str(tiny_llm),
           "--epochs", "1", "--batch-size", str(BATCH), "--set", "max_train_per_label=1000", "--set", "eval_rows=3",
           "--set", "compare_base=false", "--home", str(home), "--nproc", "2"]
    run = subprocess.run(cmd, env={**os.environ, "TUNELOOP_DDP_TRACE": str(trace)}, capture_output=True, text=True,
                         timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1 and "(champion)" in run.stdout, run.stdout
    params = [json.loads((trace / f"rank{r}-params.json").read_text()) for r in (0, 1)]
    assert params[0]["sha256"] == params[1]["sha256"]
    seen = [set(_examples(trace, r)) for r in (0, 1)]
    assert all(len(s) >= BATCH for s in seen) and len(seen[0] & seen[1]) < 2 * BATCH, seen
    assert len([p for p in Home(home).models_dir.glob("*/*") if p.is_dir()]) == 1
