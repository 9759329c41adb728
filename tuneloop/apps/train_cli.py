"""``tuneloop train``: a thin Typer layer over :func:`tuneloop.training.train.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.state.home import DEFAULT_HOME

NPROC_HELP = ("Data-parallel training in N processes on this machine: the command re-runs itself under "
              "`torchrun --standalone --nproc_per_node N` and the Trainer's DDP splits every epoch's batches "
              "between them (gloo on CPU, nccl on GPUs, one GPU per process); rank 0 alone evaluates, saves the "
              "model version and promotes. 1: one process (the default).")
DISTRIBUTED_HELP = ("Distributed training (--nproc N): `python -m torch.distributed.run --standalone "
                    "--nproc_per_node N -m tuneloop.apps.cli train --config <this run's config>` runs N copies of this "
                    "command; each trains on its share of the batches and the gradients are averaged (DDP), so the model "
                    "is the same in every process. The effective batch size is N x batch_size: lower --batch-size or "
                    "--learning-rate to keep the one-process recipe. On CPU give each process a core (torchrun sets "
                    "OMP_NUM_THREADS=1). For models too large for one GPU, the Hugging Face Trainer shards them with "
                    "FSDP (TrainingArguments fsdp=\"full_shard auto_wrap\" and fsdp_config) or DeepSpeed ZeRO "
                    "(TrainingArguments deepspeed=\"ds_config.json\", the deepspeed package installed), under this same "
                    "launcher; tuneloop does not pass those arguments yet and they are untested here (CPU only).")

HOME_OPTION = typer.Option(DEFAULT_HOME, "--home", help="Run-state folder: model store, traffic DB, reports.",
                           envvar="TUNELOOP_HOME")


def parse_sets(pairs: list[str]) -> dict:
    """``["a=1", "augment.share=0.5"]`` -> ``{"a": 1, "augment": {"share": 0.5}}`` (values parsed as YAML).

    Raises:
        typer.BadParameter: an item has no ``=``.
    """
    import yaml

    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: expected FIELD=VALUE", param_hint="--set")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def build_config(config: Path | None, preset: str, overrides: dict, sets: list[str]):
    """The TrainConfig from a YAML file or a preset, then explicit options, then ``--set`` pairs;
    exits with code 2 and the validation message when it is invalid."""
    from pydantic import ValidationError

    from tuneloop.training.config import TrainConfig, presets_for

    presets = presets_for(overrides.get("task") or "classification")
    if preset not in presets:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose from {sorted(presets)}", param_hint="--preset")
    extra = parse_sets(sets)
    try:
        if config is not None:
            cfg = TrainConfig.from_yaml(config, **overrides)
        else:
            if overrides.get("data") is None and "data" not in extra:
                raise typer.BadParameter("give --data (or a --config that sets data)", param_hint="--data")
            cfg = TrainConfig.for_preset(preset, **overrides)
        if extra:
            merged = cfg.model_dump()
            for key, value in extra.items():
                merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
            cfg = TrainConfig(**merged)
    except (ValidationError, ValueError) as exc:
        typer.secho(f"invalid training config:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    return cfg


def fields_help() -> str:
    """Every TrainConfig field with its default and description (the --help epilog)."""
    from tuneloop.training.config import TrainConfig

    rows = []
    for name, f in TrainConfig.model_fields.items():
        default = "required" if f.is_required() else f.get_default(call_default_factory=True)
        if hasattr(default, "model_dump"):  # nested config: list its own fields
            default = ", ".join(f"{k}={v!r}" for k, v in default.model_dump().items())
        rows.append(f"{name} (default: {default}): {f.description}")
    return "Fields (--config YAML keys, or --set FIELD=VALUE):\n\n" + "\n\n".join(rows)


def launch_train(cfg, home: Path, nproc: int) -> int:
    """Run ``tuneloop train --config <cfg as YAML> --home home`` in ``nproc`` torchrun processes
    (:func:`tuneloop.training.distributed.relaunch`): every rank trains with exactly the validated
    ``cfg``. Returns torchrun's exit code."""
    import tempfile

    import yaml

    from tuneloop.training.distributed import check_devices, relaunch

    try:
        check_devices(nproc)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    with tempfile.TemporaryDirectory(prefix="tuneloop-launch-") as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        typer.echo(f"training in {nproc} processes (torchrun, DDP)", err=True)
        return relaunch(["train", "--config", str(path), "--home", str(home)], nproc)


def train(
    data: str | None = typer.Option(None, "--data", help="Folder with train.csv|jsonl|parquet (+ test.*), one file, or hf:NAME."),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="YAML file of training fields; command-line options override it."),
    task: str | None = typer.Option(None, "--task", help="classification (default: text -> label, the shipped MiniLM) "
                                    "or generation (request -> reply: SmolLM2-135M-Instruct, fine-tuned with TRL).",
                                    show_default=False),
    preset: str = typer.Option("full", "--preset", help="classification: full (the most accurate measured recipe, ~14 "
                               "min on 2 CPU cores), quick (~3 min; the demo and retraining use it) or all_layers (every "
                               "weight trains). generation: quick (~4 min of training on 2 CPU cores: 8 requests per "
                               "intent, replies cut at a sentence end within 96 tokens, LoRA r=16, 2 epochs) or full "
                               "(24 per intent, replies within 160 tokens; ~15-20 min)."),
    text_column: str | None = typer.Option(None, help="Text column (default: text)."),
    prompt_column: str | None = typer.Option(None, help="generation: the request column (sets --text-column; Bitext: "
                                             "instruction)."),
    response_column: str | None = typer.Option(None, help="generation: the reference reply column (default: response)."),
    max_reply_tokens: int | None = typer.Option(None, help="generation: replies cut at a sentence end within this many "
                                                "tokens (quick 96, full 160)."),
    label_column: str | None = typer.Option(None, help="Label column (default: category)."),
    base_model: str | None = typer.Option(None, help="Local model folder (default: the shipped all-MiniLM-L6-v2)."),
    method: str | None = typer.Option(None, help="full | lora | freeze | head (presets full and quick: freeze)."),
    freeze_layers: int | None = typer.Option(None, help="Freeze embeddings + first N encoder layers."),
    epochs: float | None = typer.Option(None, help="Maximum epochs (early stopping on validation macro F1)."),
    batch_size: int | None = typer.Option(None, help="Training batch size."),
    learning_rate: float | None = typer.Option(None, help="Peak learning rate."),
    max_length: int | None = typer.Option(None, help="Tokens kept per text."),
    max_train_per_label: int | None = typer.Option(None, help="Cap on training rows per label."),
    patience: int | None = typer.Option(None, help="Early-stopping patience in epochs."),
    seed: int | None = typer.Option(None, help="Random seed."),
    model_name: str | None = typer.Option(None, help="Model name in the BentoML store."),
    quantize: str | None = typer.Option(None, help="int8: measure int8 dynamic quantisation vs fp32 and mark the "
                                           "model for int8 CPU serving."),
    set_: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE",
                                   help="Set any TrainConfig field (YAML value; dotted for nested, e.g. "
                                        "augment.share=0.5, lora_target_modules=[query,value]). Repeatable; "
                                        "listed below and in the README."),
    nproc: int = typer.Option(1, "--nproc", min=1, help=NPROC_HELP),
    home: Path = HOME_OPTION,
) -> None:
    """Fine-tune a classifier (or, with --task generation, a reply generator), evaluate it on the
    test split and save it as a new model version.

    The first model saved in a home becomes the champion (the model `tuneloop serve` serves).
    """
    from tuneloop.state.home import Home
    from tuneloop.training.data import DataError
    from tuneloop.training.distributed import is_distributed
    from tuneloop.training.train import train as run_train

    if prompt_column and text_column and prompt_column != text_column:
        raise typer.BadParameter("give --prompt-column or --text-column, not both", param_hint="--prompt-column")
    overrides = dict(task=task, data=data, text_column=prompt_column or text_column, response_column=response_column,
                     max_reply_tokens=max_reply_tokens, label_column=label_column, base_model=base_model,
                     method=method, freeze_layers=freeze_layers, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, max_length=max_length, max_train_per_label=max_train_per_label,
                     patience=patience, seed=seed, model_name=model_name, quantize=quantize)
    if freeze_layers and method is None:
        overrides["method"] = "freeze"  # --freeze-layers N alone means: freeze N layers
    cfg = build_config(config, preset, overrides, set_)
    if nproc > 1 and not is_distributed():
        raise typer.Exit(launch_train(cfg, Home(home).ensure().root, nproc))
    try:
        result = run_train(cfg, Home(home).ensure())
    except (DataError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    from tuneloop.training.task import get_task

    typer.echo(f"saved {result.tag}{' (champion)' if result.promoted else ''}")
    typer.echo(get_task(cfg.task).summary(result))


def tune(
    data: str | None = typer.Option(None, "--data", help="Same as for train."),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="Base TrainConfig YAML; the search varies some of its fields."),
    preset: str = typer.Option("quick", "--preset", help="Base preset when no --config (default: quick)."),
    trials: int = typer.Option(10, help="Most trials."),
    minutes: float = typer.Option(60.0, help="Stop starting trials after this many minutes."),
    out: Path = typer.Option(Path("best.yaml"), "--out", help="Where to write the best config (YAML)."),
    set_: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help="Set any base TrainConfig field."),
) -> None:
    """Search hyperparameters with Optuna (TPE + median pruning on validation macro F1) and write
    the best configuration as YAML for `tuneloop train --config`. Nothing is saved to the store."""
    from tuneloop.training.tune import TuneConfig
    from tuneloop.training.tune import tune as run_tune

    base = build_config(config, preset, {"data": data}, set_)
    result = run_tune(base, TuneConfig(trials=trials, minutes=minutes), out)
    typer.echo(f"best validation macro F1 {result.best_value:.4f} after {result.trials_run} trials "
               f"({result.trials_pruned} pruned): {result.best_params}")
    typer.echo(f"wrote {out}; train it with: tuneloop train --config {out}")
