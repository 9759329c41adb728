"""Seen in a real browser: ``evidently ui`` on a workspace that our monitor wrote (two judged windows
of a tiny random champion), opened in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright's Python package through ``executable_path``: no browser download). The project's
dashboard must draw every panel of ours with its line (Evidently 0.7.23's UI lists both tabs' panels
on one page), and the drifted window's report must draw our metrics, showing the descriptors' K-S
p-values that the audit table holds; the screenshots (``dashboard.png``, ``report.png``) go under the
test's ``tmp_path`` and their paths are printed (``pytest -s`` shows them).

Chromium starts with the machine notes' flags (``--no-sandbox --disable-gpu --disable-quic
--no-first-run --disable-background-networking --disable-component-update --disable-sync``, headless,
an empty profile folder): without the background-networking flags it keeps trying hosts this closed
network refuses. Every wait is bounded (:data:`WAIT_MS`) and ``evidently ui`` is stopped at the end.
Skips without chromium or Playwright, fails instead when ``TUNELOOP_REQUIRE_CHROMIUM`` is set (CI)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import save_tiny_model

from tuneloop.monitoring.evidently_ws import PANELS
from tuneloop.serving.launch import free_port, stop_server
from tuneloop.state.audit import AuditLog
from tuneloop.state.registry import promote

pytestmark = [pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium); .ci/run installs it
REQUIRE_ENV = "TUNELOOP_REQUIRE_CHROMIUM"
WAIT_MS = 60_000  # the most any page, panel or server start may take
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # Playwright adds --headless (headless=True)
PROJECT = "tuneloop-browser-test"
REFERENCE = [f"where is my card number {i}" for i in range(20)]  # the tiny champion's reference texts
DRIFTED = ["I lost my card yesterday, what do I do now", "how do I top up by bank transfer", "refund has not arrived",
           "someone stole my wallet and the card", "when will the card be delivered to me"]


def require_browser():
    """Playwright's sync API; skip (fail under ``TUNELOOP_REQUIRE_CHROMIUM``) without it or without chromium."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{missing}; {REQUIRE_ENV} is set, so CI must have it")
        pytest.skip(missing)
    return sync_playwright


def monitored_home(tmp_path: Path):
    """A home whose monitor judged two windows (in-distribution, then drifted, a quarter with feedback)
    into the Evidently workspace project :data:`PROJECT` (``home.evidently_dir``); returns the home."""
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.state.home import Home
    from tuneloop.state.traffic_store import PredictionRecord

    home = Home(tmp_path / "home").ensure()
    tag = save_tiny_model(home)
    promote(home, tag, reason="first model")
    mon = Monitor(home, MonitorConfig(metrics_port=None, evidently_project=PROJECT, save_html=False,
                                      policy={"min_window": 20, "min_new_labels": 100000}))
    for texts in (REFERENCE * 2, DRIFTED * 8):
        ids = [uuid.uuid4().hex for _ in texts]
        mon.traffic.log_predictions([PredictionRecord(rid, time.time(), t, "card_arrival", 0.9, [("card_arrival", 0.9)],
                                                      tag, 5.0) for rid, t in zip(ids, texts)])
        for rid in ids[::4]:
            mon.traffic.add_feedback(rid, "card_arrival")
        assert mon.cycle().action != "skip_small_window"
    return home


def drifted_window(home, ws, project_id) -> tuple[str, dict[str, float]]:
    """The snapshot id of the newest audited window (by its run name, the window's report stem) and its
    descriptors' K-S p-values as the audit table holds them."""
    last = AuditLog(home.store_url).decisions().iloc[-1]
    stem = f"window-{last['window_start_seq']:09d}-{last['window_end_seq']:09d}"
    snapshot = next(s for s in ws.list_runs(project_id) if ws.get_run(project_id, s).name == stem)
    descriptors = next(s for s in last["signals"]["signals"] if s["name"] == "descriptor_drift")["details"]
    return str(snapshot), {name: d["p_value"] for name, d in descriptors.items()}


@contextlib.contextmanager
def evidently_ui(workspace: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """Start ``evidently ui`` on 127.0.0.1 and a free port over ``workspace`` (created, maybe empty: the UI
    watches the folder and serves what is written later) and yield the process at once, its base URL in
    ``proc.base_url``; stopped (SIGTERM, then SIGKILL) on exit."""
    exe = shutil.which("evidently", path=str(Path(sys.executable).parent)) or shutil.which("evidently")
    assert exe, "the evidently console script is not installed beside this Python"
    workspace.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(log_path, "ab")
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen([exe, "ui", "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.base_url = f"http://127.0.0.1:{port}"
    try:
        yield proc
    finally:
        stop_server(proc, timeout_s=10)
        log.close()


def wait_for_runs(proc: subprocess.Popen, log_path: Path, project_id: str, runs: int) -> None:
    """Wait (at most :data:`WAIT_MS`) until the UI's API lists ``runs`` snapshots of ``project_id``."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(f"{proc.base_url}/api/projects/{project_id}/snapshots", timeout=2)
            if answer.status_code == 200 and len(answer.json()) == runs:
                return
        assert time.monotonic() < deadline, f"evidently ui did not list {runs} snapshots in {WAIT_MS / 1000:.0f} s"
        time.sleep(0.3)


def test_evidently_ui_draws_our_dashboard_and_a_window_report_in_chromium(tmp_path):
    sync_playwright = require_browser()
    from evidently.ui.workspace import Workspace

    shots = tmp_path / "screenshots"
    shots.mkdir()
    errors: list[str] = []
    ui_log = tmp_path / "evidently-ui.log"
    # the UI starts (seconds of imports) while the monitor writes the workspace it watches
    with evidently_ui(tmp_path / "home" / "evidently", ui_log) as ui, sync_playwright() as pw:
        started = time.monotonic()
        home = monitored_home(tmp_path)
        print(f"workspace written in {time.monotonic() - started:.1f} s")
        ws = Workspace(str(home.evidently_dir))
        project = ws.search_project(PROJECT)[0]
        assert len(ws.list_runs(project.id)) == 2
        snapshot, p_values = drifted_window(home, ws, project.id)
        wait_for_runs(ui, ui_log, str(project.id), 2)
        print(f"evidently ui serves both windows after {time.monotonic() - started:.1f} s")
        base = ui.base_url
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1600})
        try:
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            started = time.monotonic()
            page.goto(f"{base}/projects/{project.id}", wait_until="domcontentloaded")
            for _, title, _, labels in PANELS:  # Evidently 0.7.23's UI lists every tab's panels on one page
                # the innermost block holding the panel's title and its line's legend: the panel, drawn
                legend = page.get_by_text(next(iter(labels.values())), exact=True)
                panel = page.locator("div", has=page.get_by_text(title, exact=True)).filter(has=legend).last
                panel.wait_for(state="visible")
            dashboard = page.inner_text("body")
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            print(f"dashboard drawn in {time.monotonic() - started:.1f} s")

            started = time.monotonic()
            page.goto(f"{base}/projects/{project.id}/reports/{snapshot}", wait_until="domcontentloaded")
            for title in report_titles():
                page.get_by_text(title, exact=True).first.wait_for(state="visible")
            report = page.inner_text("body")
            page.screenshot(path=str(shots / "report.png"), full_page=True)
            print(f"report drawn in {time.monotonic() - started:.1f} s")
        finally:
            context.close()
    for name in ("dashboard.png", "report.png"):
        path = shots / name
        assert path.stat().st_size > 50_000, f"{path} is nearly empty"
        print(f"screenshot: {path}")
    assert PROJECT in dashboard and dashboard.count("Timestamps") >= len(PANELS)  # one time axis per panel
    # the report shows the numbers our monitor audited: each descriptor's K-S p-value (Evidently rounds to 3 places)
    for name, p in p_values.items():
        assert re.search(rf"Drift in column '{name}'\s+Data drift (not )?detected\. Drift detection method: K-S p_value\. "
                         rf"Drift score: {re.escape(str(round(p, 3)))}", report), (name, p, report[:3000])
    assert "permutation chi-square p_value" in report  # our predicted-label test (monitoring/evidently_bridge.py)
    assert not errors, errors


def report_titles() -> list[str]:
    """The widget titles a window's report draws for our metrics (Evidently 0.7.23's wording)."""
    titles = []
    for _, _, metric, labels in PANELS:
        if metric == "ValueDrift":
            titles.append(f"Drift in column '{labels['column']}'")
        elif metric == "EmbeddingsDriftScore":
            titles.append(f"Drift in embeddings: {labels['embeddings_name']} (model)")
    return titles
