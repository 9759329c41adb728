"""Hyperparameter search (``tuneloop tune``) with Optuna: TPE sampling, median pruning on the
validation macro F1 reported after every epoch, a budget in trials and minutes, and the best
configuration written as a YAML file that ``tuneloop train --config`` accepts.

Optuna directly (not ``Trainer.hyperparameter_search``) so the search runs the same
:func:`tuneloop.training.train.fine_tune` as ``tuneloop train``: what was tuned is what gets trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.training.config import TrainConfig
from tuneloop.training.data import load_splits_for

log = logging.getLogger(__name__)


class TuneConfig(BaseModel):
    """The search budget and space."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(10, ge=1, description="Most trials to run.")
    minutes: float = Field(60.0, gt=0, description="Stop starting trials after this many minutes.")
    learning_rate: tuple[float, float] = Field((2e-5, 5e-4), description="Log-uniform range.")
    epochs: tuple[int, int] = Field((2, 6), description="Integer range (early stopping still applies).")
    batch_sizes: list[int] = Field([16, 32, 64], description="Choices.")
    freeze_layers: tuple[int, int] = Field((0, 4), description="Integer range; 0 means method full.")
    warmup_ratio: tuple[float, float] = Field((0.0, 0.15), description="Uniform range.")
    weight_decay: tuple[float, float] = Field((0.0, 0.1), description="Uniform range.")
    label_smoothing: tuple[float, float] = Field((0.0, 0.2), description="Uniform range.")
    seed: int = Field(0, description="Seed of the sampler.")


@dataclass
class TuneResult:
    """The best trial: its validation macro F1, parameters, the full config, and trial counts."""

    best_value: float
    best_params: dict
    best_config: TrainConfig
    trials_run: int
    trials_pruned: int


def suggest(trial, base: TrainConfig, space: TuneConfig) -> TrainConfig:
    """The TrainConfig of one trial: ``base`` with the sampled fields."""
    freeze = trial.suggest_int("freeze_layers", *space.freeze_layers)
    return base.model_copy(update={
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "epochs": float(trial.suggest_int("epochs", *space.epochs)),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_sizes),
        "freeze_layers": freeze, "method": "freeze" if freeze else ("lora" if base.method == "lora" else "full"),
        "warmup_ratio": trial.suggest_float("warmup_ratio", *space.warmup_ratio),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay),
        "label_smoothing": trial.suggest_float("label_smoothing", *space.label_smoothing),
        "progress": False,
    })


def _pruning_callback(trial):
    import optuna
    from transformers import TrainerCallback

    class PruneOnMacroF1(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get("eval_macro_f1")
            if value is not None:
                trial.report(value, step=int(round(state.epoch or 0)))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {state.epoch}: macro F1 {value:.4f}")

    return PruneOnMacroF1()


def tune(base: TrainConfig, space: TuneConfig, out_path: Path) -> TuneResult:
    """Search, then write the best config to ``out_path`` (YAML of TrainConfig fields).

    The objective is validation macro F1 (the test split is never looked at while tuning).

    Raises:
        RuntimeError: every trial was pruned or failed.
    """
    import optuna

    from tuneloop.training.train import fine_tune

    splits = load_splits_for(base)

    def objective(trial) -> float:
        cfg = suggest(trial, base, space)
        result = fine_tune(cfg, splits, callbacks=[_pruning_callback(trial)])
        return result.val_metrics["macro_f1"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=space.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    study.optimize(objective, n_trials=space.trials, timeout=space.minutes * 60, catch=(ValueError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("no trial completed: widen the budget (--trials / --minutes) or the search space")
    best_cfg = suggest(optuna.trial.FixedTrial(study.best_params), base, space).model_copy(update={"progress": True})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fields = best_cfg.model_dump(mode="json", exclude_none=True)
    out_path.write_text(f"# tuneloop tune: best of {len(study.trials)} trials, validation macro F1 "
                        f"{study.best_value:.4f}\n" + yaml.safe_dump(fields, sort_keys=True))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return TuneResult(study.best_value, study.best_params, best_cfg, len(study.trials), pruned)
