"""The store's job lock (tuneloop.state.job_lock) on SQLite and PostgreSQL: a second holder is refused
while the first holds it and gets it afterwards, names do not collide, and a holder killed with
SIGKILL leaves nothing behind (the kernel drops its flock, the server its advisory lock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tuneloop.state.job_lock import job_lock, lock_file, lock_key


def test_lock_keys_are_stable_signed_64_bit_numbers():
    assert lock_key("retrain") == lock_key("retrain") != lock_key("train")
    assert all(-(2**63) <= lock_key(n) < 2**63 for n in ("retrain", "x", ""))


def test_a_sqlite_lock_is_a_file_beside_the_database(tmp_path):
    assert lock_file(f"sqlite:///{tmp_path}/traffic.db", "retrain") == tmp_path / "traffic.db.retrain.lock"
    with pytest.raises(ValueError, match="not a SQLite database file"):
        lock_file("sqlite://", "retrain")
    with pytest.raises(ValueError, match="SQLite or PostgreSQL"), job_lock("mysql+pymysql://u:p@h/db", "retrain"):
        pass


def test_a_second_holder_is_refused_until_the_first_releases(store_url):
    with job_lock(store_url, "retrain") as first:
        assert first
        with job_lock(store_url, "retrain") as second:
            assert not second
        with job_lock(store_url, "other-job") as other:  # another name: its own lock
            assert other
    with job_lock(store_url, "retrain") as again:
        assert again


def test_a_killed_holder_leaves_no_lock_behind(store_url):
    holder = textwrap.dedent(f"""
        import sys, time
        from tuneloop.state.job_lock import job_lock
        with job_lock({store_url!r}, "retrain") as held:
            print("held" if held else "refused", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with job_lock(store_url, "retrain") as while_held:
            assert not while_held
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with job_lock(store_url, "retrain") as after_kill:  # released by the kernel / the server, no cleanup ran
        assert after_kill
