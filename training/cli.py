"""``tuneloop train``: a thin Typer layer over :func:`training.train.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from training.home import DEFAULT_HOME

HOME_OPTION = typer.Option(DEFAULT_HOME, "--home", help="Run-state folder: model store, traffic DB, reports.",
                           envvar="TUNELOOP_HOME")


def train(
    data: Optional[str] = typer.Option(None, "--data", help="Folder with train.csv|jsonl|parquet (+ test.*), one file, or hf:NAME."),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="YAML file of training fields; command-line options override it."),
    preset: str = typer.Option("full", "--preset", help="quick (minutes on CPU; the demo and retraining use it) or full."),
    text_column: Optional[str] = typer.Option(None, help="Text column [default: text]."),
    label_column: Optional[str] = typer.Option(None, help="Label column [default: category]."),
    base_model: Optional[str] = typer.Option(None, help="Local model folder [default: the shipped all-MiniLM-L6-v2]."),
    method: Optional[str] = typer.Option(None, help="full or lora [default: full]."),
    freeze_layers: Optional[int] = typer.Option(None, help="Freeze embeddings + first N encoder layers."),
    epochs: Optional[float] = typer.Option(None, help="Maximum epochs (early stopping on validation macro F1)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    max_length: Optional[int] = typer.Option(None, help="Tokens kept per text."),
    max_train_per_label: Optional[int] = typer.Option(None, help="Cap on training rows per label."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    model_name: Optional[str] = typer.Option(None, help="Model name in the BentoML store."),
    home: Path = HOME_OPTION,
) -> None:
    """Fine-tune a classifier, evaluate it on the test split and save it as a new model version.

    The first model saved in a home becomes the champion (the model `tuneloop serve` serves).
    """
    from pydantic import ValidationError

    from training.config import PRESETS, TrainConfig
    from training.data import DataError
    from training.home import Home
    from training.train import train as run_train

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}", param_hint="--preset")
    overrides = dict(data=data, text_column=text_column, label_column=label_column, base_model=base_model,
                     method=method, freeze_layers=freeze_layers, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, max_length=max_length, max_train_per_label=max_train_per_label,
                     patience=patience, seed=seed, model_name=model_name)
    try:
        if config is not None:
            cfg = TrainConfig.from_yaml(config, **overrides)
        else:
            if data is None:
                raise typer.BadParameter("give --data (or a --config that sets data)", param_hint="--data")
            cfg = TrainConfig.for_preset(preset, **overrides)
    except (ValidationError, ValueError) as exc:
        typer.secho(f"invalid training config:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    try:
        result = run_train(cfg, Home(home).ensure())
    except (DataError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    m = result.test_metrics
    typer.echo(f"saved {result.tag}{' (champion)' if result.promoted else ''}")
    typer.echo(f"test n={m['n']} accuracy={m['accuracy']:.4f} macro_precision={m['macro_precision']:.4f} "
               f"macro_recall={m['macro_recall']:.4f} macro_f1={m['macro_f1']:.4f} "
               f"({result.epochs_run:g} epochs, {result.seconds:.0f} s)")
