"""Start ``bentoml serve`` for a tuneloop home: the command line, a blocking foreground run
(``tuneloop serve``) and a context manager that runs it in the background (tests, the demo).

The home and the serving settings travel to the service through environment variables
(:meth:`tuneloop.state.home.Home.env` plus ``TUNELOOP_*``, see :mod:`tuneloop.serving.config`); the command line
only names the service and the address. The server binds 127.0.0.1 unless told otherwise.

Several servers (replicas) may serve one home at once, on different ports: each gets a
``BENTOML_HOME`` of its own on this machine (:func:`runtime_dir`), because BentoML keeps a
server's Prometheus files there and empties them when a server starts; the model store and the
champion pointer are read through ``TUNELOOP_HOME`` and shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tuneloop
from tuneloop.serving.config import ENV_VARS
from tuneloop.serving.reviewers import check_bind, reviewers_from_env
from tuneloop.state.home import Home
from tuneloop.training.progress import QUIET_BARS_ENV

SERVICE_IMPORT = "tuneloop.serving.service:TuneloopService"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
# The folder that holds the `tuneloop` package (the repository root in an editable install,
# site-packages otherwise): `bentoml serve` imports SERVICE_IMPORT from there.
PACKAGE_PARENT = Path(tuneloop.__file__).resolve().parent.parent
STOP_TIMEOUT_S = 20.0  # SIGTERM -> graceful shutdown of the arbiter and its worker, then SIGKILL
LOG_TAIL_CHARS = 4000


class ServerStartError(RuntimeError):
    """``bentoml serve`` exited or did not become ready; the message ends with its log tail."""


@dataclass(frozen=True)
class ServerHandle:
    """A running server. ``url`` has no trailing slash (``http://127.0.0.1:PORT``)."""

    url: str
    process: subprocess.Popen
    log_path: Path


def serve_command(home: Home, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``bentoml serve`` argv for the tuneloop service.

    Args:
        home: the home to serve. It is not on the command line (the service reads
            ``$TUNELOOP_HOME``, see :func:`serve_env`); it is checked to exist, so that a typo in
            ``--home`` fails here rather than as an unready server.
        host: address to bind; keep the loopback default unless a proxy fronts the service.
        port: TCP port.

    Raises:
        FileNotFoundError: ``home.root`` does not exist.
    """
    if not home.root.is_dir():
        raise FileNotFoundError(f"tuneloop home {home.root} does not exist: train a model into it first")
    return [
        sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", host, "--port", str(port),
        "--working-dir", str(PACKAGE_PARENT),
    ]


def runtime_dir(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Path:
    """The ``BENTOML_HOME`` of the server on ``host:port``: a folder under this machine's temporary
    directory (never a shared volume: it holds memory-mapped Prometheus files), one per address,
    so two servers never share one while they run. Not created here."""
    return Path(tempfile.gettempdir()) / f"tuneloop-{os.getuid()}" / f"bentoml-{host}-{port}"


def serve_env(home: Home, overrides: Mapping[str, str] | None = None, host: str = DEFAULT_HOST,
              port: int = DEFAULT_PORT) -> dict[str, str]:
    """The child's environment: this process's, plus ``home.env()``, plus ``overrides``.

    ``BENTOML_HOME`` is the server's :func:`runtime_dir` (BentoML's Prometheus files; the models
    are read through ``TUNELOOP_HOME``), ``TUNELOOP_REPLICA`` defaults to ``<host name>:<port>``,
    and ``PROMETHEUS_MULTIPROC_DIR`` is dropped: BentoML creates and empties its own per server.
    ``TUNELOOP_BIND_HOST`` is ``host``, so the service knows whether it may take open feedback
    (:func:`tuneloop.serving.reviewers.check_bind`). ``overrides`` win over all of these.
    """
    env = {**os.environ, **home.env(), "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(runtime_dir(host, port)), ENV_VARS["bind_host"]: host}
    env.setdefault(ENV_VARS["replica"], f"{socket.gethostname()}:{port}")
    env.update(overrides or {})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file ("" when it does not exist)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll ``GET {url}/readyz`` until it answers 200.

    Raises:
        ServerStartError: the process exited, or ``timeout_s`` seconds passed.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"bentoml serve exited with code {process.returncode} before it was ready; "
                f"log {log_path} ends with:\n{log_tail(log_path)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise ServerStartError(
        f"bentoml serve at {url} was not ready after {timeout_s:.0f} s (no champion model, or it "
        f"failed to load?); log {log_path} ends with:\n{log_tail(log_path)}"
    )


def server_processes(process: subprocess.Popen) -> list:
    """The ``bentoml serve`` arbiter and its descendants (workers), as ``psutil.Process`` objects.

    The workers run in sessions of their own (circus), so signalling the arbiter's process group
    does not reach them.
    """
    import psutil

    try:
        arbiter = psutil.Process(process.pid)
        return [arbiter, *arbiter.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_server(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGKILL the arbiter and every worker at once (a crash, as ``kill -9`` of all of them), and reap."""
    import psutil

    processes = server_processes(process)
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(processes, timeout=timeout_s)
    process.wait(timeout=timeout_s)


def stop_server(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM the server (it stops its workers), wait, SIGKILL it and its workers after a timeout.

    Returns:
        The exit code.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_server(process, timeout_s)
    return process.returncode


def start_server(home: Home, host: str = DEFAULT_HOST, port: int | None = None,
                 env: Mapping[str, str] | None = None) -> ServerHandle:
    """Start ``bentoml serve`` in the background and return at once (not yet ready: see
    :func:`wait_ready`; stop it with :func:`stop_server`). Its stdout and stderr go to
    ``<home>/logs/serve-<port>.log`` (library progress bars off there:
    ``tuneloop.training.progress.QUIET_BARS_ENV``).

    Args:
        home: the tuneloop home to serve.
        host: address to bind (loopback by default).
        port: TCP port; None picks a free one.
        env: extra environment for the child (e.g. ``{"TUNELOOP_WORKERS": "2"}``), see :func:`serve_env`.

    Raises:
        FileNotFoundError: ``home.root`` does not exist.
        tuneloop.serving.reviewers.ReviewerConfigError: ``host`` is not loopback and no reviewer
            token is configured, or the reviewer tokens are invalid (nothing is started).
    """
    port = port or free_port(host)
    child_env = {**QUIET_BARS_ENV, **serve_env(home, env, host, port)}
    check_bind(host, reviewers_from_env(child_env))
    log_dir = home.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{port}.log"
    Path(child_env["BENTOML_HOME"]).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            serve_command(home, host, port), env=child_env, cwd=PACKAGE_PARENT,
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return ServerHandle(url=f"http://{host}:{port}", process=process, log_path=log_path)


@contextlib.contextmanager
def running_servers(
    home: Home, envs: list[Mapping[str, str]], host: str = DEFAULT_HOST, ready_timeout: float = 120.0,
) -> Iterator[list[ServerHandle]]:
    """Run one background ``bentoml serve`` per mapping in ``envs`` (replicas of one home, each on a
    free port with its own ``BENTOML_HOME``), started together, until the ``with`` block ends.

    Args:
        home: the tuneloop home they all serve.
        envs: each server's extra environment (e.g. ``{"TUNELOOP_REPLICA": "a", "TUNELOOP_WORKERS": "2"}``).
        host: address to bind (loopback by default).
        ready_timeout: seconds to wait for every server's ``/readyz``.

    Yields:
        The :class:`ServerHandle` of each, in the order of ``envs``, once all answer ``/readyz`` 200.

    Raises:
        ServerStartError: a server exited or was not ready in time (message has its log tail).
    """
    handles: list[ServerHandle] = []
    try:
        for env in envs:
            handles.append(start_server(home, host, None, env))
        deadline = time.monotonic() + ready_timeout
        for handle in handles:
            wait_ready(handle.url, handle.process, handle.log_path, max(deadline - time.monotonic(), 1.0))
        yield handles
    finally:
        for handle in handles:  # SIGTERM to all first: they shut down in parallel
            if handle.process.poll() is None:
                handle.process.send_signal(signal.SIGTERM)
        for handle in handles:
            try:
                handle.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_server(handle.process)
            _remove_runtime_dir(handle)


def _remove_runtime_dir(handle: ServerHandle) -> None:
    """Delete a stopped server's default :func:`runtime_dir` (not one the caller chose)."""
    host, _, port = handle.url.removeprefix("http://").rpartition(":")
    shutil.rmtree(runtime_dir(host, int(port)), ignore_errors=True)


@contextlib.contextmanager
def running_server(
    home: Home,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[ServerHandle]:
    """Run the service in a background ``bentoml serve`` until the ``with`` block ends
    (:func:`start_server`, whose arguments these are, then :func:`wait_ready` for up to
    ``ready_timeout`` seconds; stopped with :func:`stop_server`).

    Yields:
        The :class:`ServerHandle` once ``/readyz`` answers 200.

    Raises:
        ServerStartError: the server exited or was not ready in time (message has the log tail).
    """
    handle = start_server(home, host, port, env)
    try:
        wait_ready(handle.url, handle.process, handle.log_path, ready_timeout)
        yield handle
    finally:
        stop_server(handle.process)
        _remove_runtime_dir(handle)


def run_foreground(home: Home, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                   env: Mapping[str, str] | None = None) -> None:
    """Replace this process with ``bentoml serve`` (``exec``): its signals and exit code are the server's.

    Raises:
        FileNotFoundError: ``home.root`` does not exist.
        OSError: the ``bentoml`` executable could not be started.
        tuneloop.serving.reviewers.ReviewerConfigError: see :func:`start_server`.
    """
    argv = serve_command(home, host, port)
    child_env = serve_env(home, env, host, port)
    check_bind(host, reviewers_from_env(child_env))
    Path(child_env["BENTOML_HOME"]).mkdir(parents=True, exist_ok=True)
    os.execve(argv[0], argv, child_env)
