"""``tuneloop serve``: run the BentoML service for a home in the foreground.

The root CLI (``monitoring/cli.py``) registers :func:`serve`; ``app`` is a stand-alone Typer app
holding the same command (``python -m tuneloop.apps.serve_cli serve --help``), for ``add_typer`` too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.serving.config import ENV_VARS, ServeConfig
from tuneloop.serving.launch import DEFAULT_HOST, DEFAULT_PORT, run_foreground
from tuneloop.serving.reviewers import check_bind, reviewers_of
from tuneloop.state.home import DB_URL_ENV, DB_URL_HELP, DEFAULT_HOME, HOME_ENV, Home
from tuneloop.state.registry import read_champion
from tuneloop.state.store_engine import describe

app = typer.Typer(help="Serve the champion model over HTTP (BentoML).", no_args_is_help=True)


def _overrides(**values: object) -> dict[str, str]:
    """``TUNELOOP_*`` variables for the options that were given (None = keep env / default)."""
    return {ENV_VARS[name]: str(value) for name, value in values.items() if value is not None}


@app.command("serve")
def serve(
    home: Annotated[Path, typer.Option(envvar=HOME_ENV, help="Tuneloop home folder (champion pointer, "
                                       "model store, traffic DB).")] = DEFAULT_HOME,
    host: Annotated[str, typer.Option(help="Address to bind. Keep the loopback default unless a "
                                      "reverse proxy fronts the service.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    admin_token: Annotated[str | None, typer.Option(
        envvar=ENV_VARS["admin_token"], show_default=False,
        help="Bearer token for POST /admin/reload. Without one the admin endpoints answer 403. "
             f"Prefer the {ENV_VARS['admin_token']} variable: a command-line value shows in `ps`.")] = None,
    reviewer_tokens: Annotated[str | None, typer.Option(
        envvar=ENV_VARS["reviewer_tokens"], show_default=False,
        help="Reviewers who may POST /feedback, as name:token pairs ('alice:TOKEN1,bob:TOKEN2'; tokens of "
             "16+ printable characters); each feedback row records its reviewer. Without reviewer tokens "
             "/feedback is open and only a loopback --host is allowed. Prefer the TUNELOOP_REVIEWER_TOKENS "
             "variable or --reviewer-tokens-file: a command-line value shows in `ps`.")] = None,
    reviewer_tokens_file: Annotated[Path | None, typer.Option(
        envvar=ENV_VARS["reviewer_tokens_file"], show_default=False,
        help="File of reviewer tokens: one name:token per line (# comments) or a JSON object name -> token; "
             "refused when other users can read it (chmod 600).")] = None,
    poll_seconds: Annotated[float | None, typer.Option(
        help="Seconds between checks of the champion pointer for a newly promoted model (default: 2).")] = None,
    max_text_chars: Annotated[int | None, typer.Option(
        help="Longest accepted text in characters; longer ones get HTTP 400 (default: 1000).")] = None,
    max_batch_texts: Annotated[int | None, typer.Option(
        help="Most texts in one /classify request; more get HTTP 400 (default: 64).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        help="Most texts merged into one batch by adaptive batching (default: 64).")] = None,
    max_latency_ms: Annotated[int | None, typer.Option(
        help="Longest a text may wait for its batch before it is answered 503 (load shedding); keep it "
             "generous when training shares the CPU (default: 30000).")] = None,
    torch_threads: Annotated[int | None, typer.Option(
        help="torch intra-op threads per forward pass (default: 1).")] = None,
    inference_workers: Annotated[int | None, typer.Option(
        help="Batches computed at once, one thread each (default: 1; 2 on a dedicated 2-core server).")] = None,
    workers: Annotated[int | None, typer.Option(
        envvar=ENV_VARS["workers"], show_default=False,
        help="Worker processes on the port, each with its own copy of the model, batcher and log writer; "
             "/metrics sums them (default: 1).")] = None,
    replica: Annotated[str | None, typer.Option(
        envvar=ENV_VARS["replica"], show_default=False,
        help="This replica's name, logged with every prediction beside the worker index, for several "
             "`tuneloop serve` sharing one home and --db-url (default: <host name>:<port>).")] = None,
    batch_window_ms: Annotated[float | None, typer.Option(
        help="How long a free inference worker waits for more texts before it starts a batch (default: 2).")] = None,
    quantize: Annotated[str | None, typer.Option(
        help="auto (int8 when the model was trained for it and no GPU), none, int8, or bf16 (CPUs with "
             "AVX512-BF16/AMX) (default: auto).")] = None,
    db_url: Annotated[str | None, typer.Option(envvar=DB_URL_ENV, show_default=False, help=DB_URL_HELP)] = None,
    wait_for_champion: Annotated[bool, typer.Option(
        "--wait-for-champion", help="Start even if no model was promoted yet: the service stays "
        "unready (/readyz 503) until one is, then loads it.")] = False,
) -> None:
    """Serve the champion model of HOME on http://HOST:PORT until interrupted.

    Endpoints: POST /classify {"texts": [...]}, POST /feedback {"request_id", "label"}, POST
    /admin/reload (bearer token), GET /healthz, GET /readyz, GET /metrics (Prometheus), GET
    /docs.json (OpenAPI). Every other setting is a TUNELOOP_* variable (README, HTTP API).

    The service follows the champion pointer: a model promoted while it runs is loaded,
    smoke-tested and swapped in without a restart, by every worker process (--workers) and
    every replica (several `tuneloop serve` on other ports or hosts sharing HOME's model store
    and one --db-url store; each logged prediction names its replica and worker). Exits 1 when
    HOME has no champion (unless --wait-for-champion), 2 on an invalid setting (also: a --host
    other than loopback without reviewer tokens).
    """
    home_obj = Home(home, db_url=db_url or None)
    overrides = _overrides(
        poll_seconds=poll_seconds, max_text_chars=max_text_chars, max_batch_texts=max_batch_texts,
        max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, torch_threads=torch_threads,
        inference_workers=inference_workers, batch_window_ms=batch_window_ms, quantize=quantize,
        workers=workers, replica=replica,
        admin_token=admin_token, reviewer_tokens=reviewer_tokens,
        reviewer_tokens_file=reviewer_tokens_file.resolve() if reviewer_tokens_file else None,
    )
    try:
        reviewers = reviewers_of(ServeConfig.from_env({**os.environ, **home_obj.env(), **overrides}))
        check_bind(host, reviewers)
    except ValueError as exc:  # ReviewerConfigError too
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if not home_obj.root.is_dir():
        typer.echo(f"error: tuneloop home {home_obj.root} does not exist; train a model into it first "
                   f"(`tuneloop train --home {home_obj.root} ...`)", err=True)
        raise typer.Exit(code=1)
    if read_champion(home_obj) is None and not wait_for_champion:
        typer.echo(f"error: no champion model in {home_obj.root}: train and promote one first "
                   f"(`tuneloop train --home {home_obj.root} ...`), or pass --wait-for-champion", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"serving {home_obj.root} on http://{host}:{port} (traffic store {describe(home_obj.store_url)}, "
               f"admin endpoints {'enabled' if admin_token else 'disabled'}, /feedback "
               f"{f'needs a token of {len(reviewers.names)} reviewer(s)' if reviewers else 'open (loopback only)'})",
               err=True)
    run_foreground(home_obj, host, port, env=overrides)


@app.callback()
def _main() -> None:
    """Serve the champion model over HTTP (BentoML)."""


if __name__ == "__main__":
    app()
