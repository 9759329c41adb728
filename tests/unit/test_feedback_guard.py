"""Guarded feedback: reviewer tokens (parsing, constant-time lookup, the token file's permissions), the
loopback rule, every rejection of ``/feedback`` through the service in-process (BentoML's ASGI app in a
TestClient, as tests/unit/test_service.py), the reviewer stored with each row, the second-feedback rule
(latest wins, audited) on both stores, and retraining that excludes reviewers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_service import asgi_app  # noqa: F401  (one BentoML app per test process; sets PROMETHEUS_MULTIPROC_DIR)

ALICE, BOB = "alice-token-0123456789", "bob-token-abcdefghijkl"


# --- tokens, pure ------------------------------------------------------------------------------------

def test_tokens_from_the_environment_name_their_reviewers():
    from tuneloop.serving.reviewers import reviewers_from_env

    reviewers = reviewers_from_env({"TUNELOOP_REVIEWER_TOKENS": f" alice:{ALICE} , bob:{BOB}"})
    assert reviewers.names == ("alice", "bob")
    assert reviewers.reviewer_of(ALICE) == "alice" and reviewers.reviewer_of(BOB) == "bob"
    assert reviewers.reviewer_of(ALICE[:-1]) is None and reviewers.reviewer_of("") is None
    assert ALICE not in repr(reviewers) and BOB not in repr(reviewers)
    assert not reviewers_from_env({}) and reviewers_from_env({}).reviewer_of(ALICE) is None


@pytest.mark.parametrize(("value", "message"), [
    ("alice:short", "16-256 printable ASCII"),
    (f"alice:{ALICE},bob:{ALICE}", "share one token"),
    (f"alice:{ALICE},alice:{BOB}", "configured twice"),
    (f"{ALICE}", "expected name:token"),
    (f"al ice:{ALICE}", "the name"),
    ("alice:" + "x" * 300, "16-256"),
    ("alice:token with spaces in it", "printable ASCII"),
])
def test_bad_tokens_are_refused_without_showing_them(value, message):
    from tuneloop.serving.reviewers import ReviewerConfigError, reviewers_from_env

    with pytest.raises(ReviewerConfigError, match=message) as info:
        reviewers_from_env({"TUNELOOP_REVIEWER_TOKENS": value})
    assert "TUNELOOP_REVIEWER_TOKENS" in str(info.value) and ALICE not in str(info.value)


def test_token_file_lines_or_json_and_never_readable_by_others(tmp_path):
    from tuneloop.serving.reviewers import ReviewerConfigError, load_reviewers

    lines = tmp_path / "tokens"
    lines.write_text(f"# reviewers\nalice:{ALICE}\n\nbob:{BOB}\n")
    lines.chmod(0o600)
    assert load_reviewers(None, lines).names == ("alice", "bob")
    assert load_reviewers("carol:carol-token-0123456789", lines).names == ("carol", "alice", "bob")
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps([{"name": "alice", "token": ALICE}]))
    as_json.chmod(0o640)  # group-readable is allowed (a secret shared with the service's group)
    assert load_reviewers(None, as_json).reviewer_of(ALICE) == "alice"
    lines.chmod(0o644)
    with pytest.raises(ReviewerConfigError, match="chmod 600"):
        load_reviewers(None, lines)
    with pytest.raises(ReviewerConfigError, match="cannot read"):
        load_reviewers(None, tmp_path / "missing")
    as_json.write_text('{"alice": 3}')
    with pytest.raises(ReviewerConfigError, match="JSON must be"):
        load_reviewers(None, as_json)


@pytest.mark.parametrize("header", [
    None, "", f"Basic {ALICE}", "Bearer", "Bearer ", f"Bearer {ALICE}x", f"{ALICE}",
    "Bearer " + "a" * 100_000, f"Bearer {ALICE} {ALICE}", "Bearer \udcff\udcfe garbage",
])
def test_authorization_headers_that_name_no_reviewer(header):
    from tuneloop.serving.reviewers import feedback_access, reviewers_from_env

    reviewers = reviewers_from_env({"TUNELOOP_REVIEWER_TOKENS": f"alice:{ALICE}"})
    assert reviewers.reviewer_of_header(header) is None
    access = feedback_access(reviewers, header, "127.0.0.1")
    assert access.status == 401 and access.reviewer is None and ALICE not in access.message
    assert reviewers.reviewer_of_header(f"bearer   {ALICE} ") == "alice"  # scheme case and spaces as RFC 7235


def test_open_feedback_only_on_loopback():
    from tuneloop.serving.reviewers import ReviewerConfigError, ReviewerTokens, check_bind, feedback_access, is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.org", ""))
    check_bind("127.0.0.1", ReviewerTokens())
    with pytest.raises(ReviewerConfigError, match="TUNELOOP_REVIEWER_TOKENS"):
        check_bind("0.0.0.0", ReviewerTokens())
    check_bind("0.0.0.0", ReviewerTokens.from_pairs([("alice", ALICE)], "test"))
    assert feedback_access(ReviewerTokens(), None, "127.0.0.1").status is None
    assert feedback_access(ReviewerTokens(), None, "testserver").status is None  # names are not judged
    assert feedback_access(ReviewerTokens(), None, "192.168.1.7").status == 403


def test_a_service_on_another_address_refuses_to_start_without_tokens(champion_home, monkeypatch, tmp_path):
    """`tuneloop serve --host 0.0.0.0`, `start_server` and the service itself refuse to start without reviewer
    tokens (and with invalid ones); with tokens the service starts."""
    from typer.testing import CliRunner

    from tuneloop.apps.serve_cli import app
    from tuneloop.serving.launch import start_server
    from tuneloop.serving.reviewers import ReviewerConfigError

    for var in ("TUNELOOP_REVIEWER_TOKENS", "TUNELOOP_REVIEWER_TOKENS_FILE"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["serve", "--home", str(champion_home.root), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "TUNELOOP_REVIEWER_TOKENS" in result.output and "0.0.0.0" in result.output
    with pytest.raises(ReviewerConfigError, match="TUNELOOP_REVIEWER_TOKENS"):
        start_server(champion_home, host="0.0.0.0", port=1)  # refused before anything starts
    assert not (champion_home.root / "logs" / "serve-1.log").exists()
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:short\n")
    tokens.chmod(0o600)
    result = CliRunner().invoke(app, ["serve", "--home", str(champion_home.root), "--reviewer-tokens-file", str(tokens)])
    assert result.exit_code == 2 and "16-256" in result.output
    # the service itself (a plain `bentoml serve` with TUNELOOP_BIND_HOST): no start without tokens, a start with them
    from test_service import make_client

    monkeypatch.setenv("TUNELOOP_BIND_HOST", "0.0.0.0")
    with pytest.raises(ReviewerConfigError, match="refusing to bind 0.0.0.0"), make_client(champion_home, monkeypatch):
        pass
    monkeypatch.setenv("TUNELOOP_REVIEWER_TOKENS", f"alice:{ALICE}")
    with make_client(champion_home, monkeypatch) as c:
        assert c.get("/readyz").status_code == 200


def test_serve_with_tokens_binds_any_address_and_passes_them_on(champion_home, monkeypatch, tmp_path):
    """`tuneloop serve --host 0.0.0.0 --reviewer-tokens-file F`: allowed, and the server's environment
    names the file by its absolute path (the exec is replaced by a recorder, as in test_serving_scale_units)."""
    from typer.testing import CliRunner

    from tuneloop.apps import serve_cli

    for var in ("TUNELOOP_REVIEWER_TOKENS", "TUNELOOP_REVIEWER_TOKENS_FILE"):
        monkeypatch.delenv(var, raising=False)
    launched = []
    monkeypatch.setattr(serve_cli, "run_foreground", lambda home, host, port, env: launched.append((host, env)))
    (tmp_path / "tokens").write_text(f"alice:{ALICE}\n")
    (tmp_path / "tokens").chmod(0o600)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(serve_cli.app, ["serve", "--home", str(champion_home.root), "--host", "0.0.0.0",
                                                "--reviewer-tokens-file", "tokens"])
    assert result.exit_code == 0, result.output
    assert "needs a token of 1 reviewer" in result.output and ALICE not in result.output
    host, env = launched[0]
    assert host == "0.0.0.0" and env["TUNELOOP_REVIEWER_TOKENS_FILE"] == str(tmp_path / "tokens")


# --- the service in-process ----------------------------------------------------------------------------

def guarded_client(home, monkeypatch, tokens: str | None, db_url: str | None = None):
    """A TestClient of the service over ``home`` with reviewer ``tokens`` (None: none configured)."""
    from test_service import make_client

    for var in ("TUNELOOP_REVIEWER_TOKENS", "TUNELOOP_REVIEWER_TOKENS_FILE", "TUNELOOP_BIND_HOST"):
        monkeypatch.delenv(var, raising=False)
    if tokens is not None:
        monkeypatch.setenv("TUNELOOP_REVIEWER_TOKENS", tokens)
    if db_url is not None:
        monkeypatch.setenv("TUNELOOP_DB_URL", db_url)
    return make_client(home, monkeypatch)


def classify(client) -> str:
    return client.post("/classify", json={"texts": ["where is my card"]}).json()[0]["request_id"]


def test_feedback_rejections_with_reviewer_tokens(champion_home, monkeypatch):
    from tuneloop.state.traffic_store import TrafficLog

    with guarded_client(champion_home, monkeypatch, f"alice:{ALICE},bob:{BOB}") as c:
        rid = classify(c)
        body = {"request_id": rid, "label": "lost_card"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {ALICE}"},
                        {"Authorization": ALICE}, {"Authorization": "Bearer " + "x" * 8000},
                        {"Authorization": b"Bearer \xff\xfe\x00garbage"}):
            r = c.post("/feedback", json=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith('Bearer realm="tuneloop-feedback"')
            assert "reviewer token" in r.json()["error"] and ALICE not in r.text
        assert TrafficLog(champion_home.traffic_db_path).count_labelled() == 0
    # bob is removed from the configuration: his token no longer works, alice's still does
    with guarded_client(champion_home, monkeypatch, f"alice:{ALICE}") as c:
        r = c.post("/feedback", json=body, headers={"Authorization": f"Bearer {BOB}"})
        assert r.status_code == 401
        r = c.post("/feedback", json=body, headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200 and r.json()["reviewer"] == "alice"


def test_reviewer_is_recorded_and_a_second_feedback_replaces_the_first(champion_home, monkeypatch, home_db_url):
    from tuneloop.state.events import FEEDBACK_REPLACED, EventLog
    from tuneloop.state.home import Home
    from tuneloop.state.traffic_store import TrafficLog

    store = Home(champion_home.root, db_url=home_db_url).store_url
    with guarded_client(champion_home, monkeypatch, f"alice:{ALICE},bob:{BOB}", db_url=home_db_url) as c:
        rid = classify(c)
        r = c.post("/feedback", json={"request_id": rid, "label": "lost_card"}, headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200 and r.json() == {"request_id": rid, "label": "lost_card", "recorded": True,
                                                     "reviewer": "alice", "replaced": False}
        r = c.post("/feedback", json={"request_id": rid, "label": "refund"}, headers={"Authorization": f"Bearer {BOB}"})
        assert r.status_code == 200 and r.json()["replaced"] is True and r.json()["reviewer"] == "bob"
        r = c.post("/feedback", json={"request_id": rid, "label": "refund"}, headers={"Authorization": f"Bearer {BOB}"})
        assert r.status_code == 200 and r.json()["replaced"] is False  # a retry: nothing changes
    labelled = TrafficLog(store).labelled()
    assert list(labelled["true_label"]) == ["refund"] and list(labelled["reviewer"]) == ["bob"]
    (event,) = EventLog(store).events(kind=FEEDBACK_REPLACED)
    assert event.actor == "bob" and event.detail["request_id"] == rid
    assert event.detail["before"]["true_label"] == "lost_card" and event.detail["before"]["reviewer"] == "alice"
    assert event.detail["after"]["true_label"] == "refund" and event.detail["after"]["reviewer"] == "bob"


def test_without_tokens_feedback_stays_open_on_loopback_with_no_reviewer(champion_home, monkeypatch):
    from tuneloop.state.traffic_store import TrafficLog

    with guarded_client(champion_home, monkeypatch, None) as c:
        rid = classify(c)
        r = c.post("/feedback", json={"request_id": rid, "label": "lost_card"}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 200 and r.json()["reviewer"] is None
    assert TrafficLog(champion_home.traffic_db_path).labelled()["reviewer"].isna().all()


# --- the store: the rule on both engines --------------------------------------------------------------

def test_second_feedback_latest_wins_audited_in_the_store(store_url):
    from test_traffic_store_engines import record

    from tuneloop.state.events import FEEDBACK_REPLACED, EventLog
    from tuneloop.state.traffic_store import GenerationRecord, TrafficLog

    log = TrafficLog(store_url)
    log.log_predictions([record("c1"), record("c2")])
    log.log_predictions([record("g1", generation=GenerationRecord("hi", "stop", 3, 1, -0.5))])
    assert log.add_feedback("c1", "top_up", reviewer="alice").replaced is None
    assert log.add_feedback("c2", "refund").replaced is None
    assert log.add_feedback("c1", "top_up", reviewer="alice").unchanged  # same again: no write, no event
    replaced = log.add_feedback("c1", "lost_card", reviewer="bob").replaced
    assert replaced["true_label"] == "top_up" and replaced["reviewer"] == "alice"
    assert log.add_generation_feedback("g1", rating=-1, reviewer="alice").replaced is None
    assert log.add_generation_feedback("g1", reply="Hello!", reviewer="alice").replaced["rating"] == -1
    labelled = log.labelled().set_index("request_id")
    assert labelled.loc["c1", "true_label"] == "lost_card" and labelled.loc["c1", "reviewer"] == "bob"
    assert labelled.loc["c2", "reviewer"] is None
    assert labelled.loc["g1", "true_reply"] == "Hello!" and pd.isna(labelled.loc["g1", "rating"])
    assert list(log.labelled()["request_id"]) == ["c1", "c2", "g1"]  # a replacement keeps its place
    events = EventLog(store_url).events(kind=FEEDBACK_REPLACED)
    assert [(e.actor, e.detail["request_id"]) for e in events] == [("bob", "c1"), ("alice", "g1")]
    assert events[1].detail["after"]["reply"] == "Hello!" and events[1].detail["after"]["rating"] is None


# --- retraining without some reviewers -----------------------------------------------------------------

def test_exclude_reviewers_drops_their_feedback_only():
    from tuneloop.monitoring.feedback_rows import without_reviewers
    from tuneloop.monitoring.retrain import RetrainConfig

    labelled = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "reviewer": ["alice", "mallory", None, "bob"]})
    kept = without_reviewers(labelled, RetrainConfig(exclude_reviewers=["mallory", "bob"]).exclude_reviewers)
    assert list(kept["request_id"]) == ["a", "c"]
    assert without_reviewers(labelled, []) is labelled
    assert list(without_reviewers(labelled.drop(columns="reviewer"), ["alice"])["request_id"]) == list("abcd")


def test_exclude_reviewer_option_reaches_the_retrain_config(champion_home, monkeypatch):
    """`tuneloop retrain --exclude-reviewer` (repeatable) sets RetrainConfig.exclude_reviewers (the job itself
    is replaced by a recorder: training is not what this checks); `tuneloop monitor` has the same option."""
    from types import SimpleNamespace

    from typer.main import get_command
    from typer.testing import CliRunner

    from tuneloop.apps.cli import app
    from tuneloop.monitoring import retrain_job

    seen = []
    monkeypatch.setattr(retrain_job, "run_job", lambda home, cfg, **kw: seen.append(cfg) or SimpleNamespace(
        action="nothing_due", reason="test", exit_code=0))
    result = CliRunner().invoke(app, ["retrain", "--home", str(champion_home.root), "--exclude-reviewer", "mallory",
                                      "--exclude-reviewer", "eve@example.org"])
    assert result.exit_code == 0, result.output
    assert seen[0].retrain.exclude_reviewers == ["mallory", "eve@example.org"]
    monitor_options = {o for p in get_command(app).commands["monitor"].params for o in p.opts}
    assert "--exclude-reviewer" in monitor_options
