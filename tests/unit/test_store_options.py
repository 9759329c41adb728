"""``--db-url`` / ``$TUNELOOP_DB_URL`` on ``tuneloop serve`` and ``tuneloop demo``: the served process
gets the store through its environment, messages mask the password, and a demo refuses a database
that already holds traffic."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from tuneloop.apps.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_db_url_option_is_documented(command):
    out = runner.invoke(app, [command, "--help"], terminal_width=200).output
    assert "--db-url" in out and "TUNELOOP_DB_URL" in out and "postgresql+psycopg://" in out


@pytest.mark.parametrize("via", ["option", "environment"])
def test_serve_passes_the_store_to_the_server_and_masks_the_password(champion_home, monkeypatch, via):
    from tuneloop.apps import serve_cli
    from tuneloop.serving.launch import serve_env

    url = "postgresql+psycopg://tuneloop:s3cret@db.internal:5432/traffic"
    launched = []
    monkeypatch.setattr(serve_cli, "run_foreground", lambda home, host, port, env: launched.append((home, env)))
    args = ["serve", "--home", str(champion_home.root)] + (["--db-url", url] if via == "option" else [])
    result = runner.invoke(app, args, env={"TUNELOOP_DB_URL": url} if via == "environment" else {})
    assert result.exit_code == 0, result.output
    (home, overrides), = launched
    assert home.db_url == url and home.store_url == url
    assert serve_env(home, overrides)["TUNELOOP_DB_URL"] == url  # what `bentoml serve` and its workers read
    assert "s3cret" not in result.output and "tuneloop:***@db.internal:5432/traffic" in result.output


def test_serve_without_db_url_keeps_sqlite_in_the_home(champion_home, monkeypatch):
    from tuneloop.apps import serve_cli

    launched = []
    monkeypatch.setattr(serve_cli, "run_foreground", lambda home, host, port, env: launched.append(home))
    monkeypatch.delenv("TUNELOOP_DB_URL", raising=False)
    result = runner.invoke(app, ["serve", "--home", str(champion_home.root)])
    assert result.exit_code == 0, result.output
    assert launched[0].db_url is None and launched[0].store_url == f"sqlite:///{champion_home.traffic_db_path}"


def test_a_demo_run_uses_the_database_only_while_it_is_empty(tmp_path, pg_url):
    from tuneloop.apps.demo import run_home_of
    from tuneloop.state.home import Home
    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    home = Home(tmp_path / "home", db_url=pg_url)
    run_home = run_home_of(home, tmp_path / "home" / "runs" / "demo-1")
    assert run_home.db_url == pg_url and run_home.root == (tmp_path / "home" / "runs" / "demo-1").resolve()
    assert run_home_of(Home(tmp_path / "h2"), tmp_path / "h2" / "runs" / "r").db_url is None  # SQLite per run
    TrafficLog(pg_url).log_predictions([PredictionRecord("r1", time.time(), "t", "a", 0.9, [], "m:1", 1.0)])
    with pytest.raises(ValueError, match="already holds traffic") as err:
        run_home_of(home, tmp_path / "home" / "runs" / "demo-2")
    assert "tuneloop:***@" in str(err.value) and ":tuneloop@" not in str(err.value)
