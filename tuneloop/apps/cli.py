"""The ``tuneloop`` console script: one subcommand per job.

Lives in ``monitoring`` because it is the one package allowed to import the other two. Each
subcommand is a thin layer; importing this module loads no model and no heavy library.
"""

from __future__ import annotations

import os

import typer

from tuneloop.apps.demo_cli import demo
from tuneloop.apps.labels_cli import labels_app
from tuneloop.apps.models_cli import models_app
from tuneloop.apps.monitor_cli import monitor
from tuneloop.apps.retrain_cli import retrain
from tuneloop.apps.serve_cli import serve
from tuneloop.apps.train_cli import DISTRIBUTED_HELP, fields_help, train, tune

app = typer.Typer(
    name="tuneloop",
    help="Fine-tune a transformer text classifier, serve it (BentoML), watch it drift (Evidently), "
         "retrain, gate and hot-swap it. Run state lives in --home (default ./.tuneloop).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Runs before every subcommand: opt out of telemetry (nothing here phones home); off a
    terminal, no library progress bars (see ``tuneloop.training.progress``)."""
    from tuneloop.training.progress import QUIET_BARS_ENV, on_terminal

    for var, value in (("BENTOML_DO_NOT_TRACK", "true"), ("DO_NOT_TRACK", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), *(() if on_terminal() else QUIET_BARS_ENV.items())):
        os.environ.setdefault(var, value)


app.command("train", epilog=DISTRIBUTED_HELP + "\n\n" + fields_help())(train)
app.command("tune")(tune)
app.command("serve")(serve)
app.command("monitor")(monitor)
app.command("retrain")(retrain)
app.command("demo")(demo)
app.add_typer(models_app, name="models")
app.add_typer(labels_app, name="labels")

if __name__ == "__main__":
    app()
