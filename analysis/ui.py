"""Start the MLflow UI on a study's tracking store.

`ui_command` runs `mlflow ui --backend-store-uri URI --host H --port P` in the foreground (the
`mfsweep ui` command); `start_ui` starts it in the background and waits until it answers (tests,
notebooks). The server is launched as `python -m mlflow` so it comes from this environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def ui_args(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000,
            workers: int | None = None) -> list[str]:
    """The argv of the MLflow UI server for `tracking_uri`."""
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port)]
    return args + (["--workers", str(workers)] if workers else [])


def ui_url(host: str, port: int) -> str:
    """Browser address of the server (0.0.0.0 / :: are shown as 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def ui_env(jobs: bool = False) -> dict[str, str]:
    """Environment for the server. MLflow's job runner (a pool of huey workers serving GenAI
    features such as LLM judges) is switched off unless `jobs`: browsing runs does not need it."""
    env = dict(os.environ)
    if not jobs:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI in the foreground until interrupted; returns its exit code.

    Runs are listed under http://HOST:PORT/#/experiments/<id>/runs (MLflow 3 opens an
    experiment on its GenAI overview page otherwise).
    """
    print(f"MLflow UI for {tracking_uri} at {ui_url(host, port)}  (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(ui_args(tracking_uri, host, port), env=ui_env())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers HTTP 200; raise TimeoutError (or RuntimeError if `proc` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_ui(tracking_uri: str, host: str = "127.0.0.1", port: int | None = None,
             timeout: float = 90.0, cwd: str | Path | None = None,
             log_path: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start `mlflow ui` in the background (one worker), wait until it answers; (process, url).

    `port=None` picks a free port. The server's output goes to `log_path` (or is discarded).
    Stop it with `stop_ui(proc)`, which also ends the worker processes the server forked.
    """
    port = port or free_port(host)
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    # own session: stop_ui can signal the server and the workers it forks, and nothing else
    proc = subprocess.Popen(ui_args(tracking_uri, host, port, workers=1), cwd=cwd,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=ui_env())
    url = ui_url(host, port)
    try:
        wait_until_up(url + "/health", timeout, proc)
    except BaseException:
        stop_ui(proc)
        raise
    finally:
        if log_path:
            out.close()
    print(f"MLflow UI at {url}", flush=True)
    return proc, url


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_ui made the server a session (and group) leader
    except (ProcessLookupError, PermissionError):
        pass


def stop_ui(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a server started by `start_ui`: SIGTERM to its process group, SIGKILL if it lingers."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
