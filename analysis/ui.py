"""Start the MLflow UI on a study's tracking store, opened on the study's runs.

`ui_command` runs `mlflow ui --backend-store-uri URI --host H --port P` in the foreground (the
`mfsweep ui` command): once the server answers it prints the study's runs page and opens it in a
browser where one is available (`open_browser`: never in CI or without a display); `start_ui` starts
the server in the background and waits until it answers (tests, notebooks). The server is launched
as `python -m mlflow` so it comes from this environment.

Where the UI opens (MLflow 3.17): an experiment opened at ``#/experiments/<id>`` goes to the GenAI
"Overview" (traces, sessions, token usage) unless the UI's workflow type is "Model training". The
MLflow 3.17 UI takes that workflow type from the ``workflowType`` query parameter of the page, else
from the browser's local storage (``mlflow.workflowType``, default ``genai``); it does not read the
experiment's ``mlflow.experimentKind`` tag for it (mfsweep still sets that tag, see
docs/architecture.md). So `runs_url` names the runs tab and ``workflowType=machine_learning``, and,
for a study, filters the table to the study's runs and sorts it by run name: with a filter and a
sort other than "Created" the MLflow UI lists child runs as rows of their own instead of folding
them under a collapsed parent, so the first screen shows the parent run and its trials.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from mfsweep.schema import quote

#: The MLflow UI's ``workflowType`` for classic ML / deep learning ("Model training" in its sidebar).
MODEL_TRAINING_WORKFLOW = "machine_learning"
#: Text-mode browsers `webbrowser` may pick; they would take over the terminal the server logs to.
CONSOLE_BROWSERS = frozenset({"www-browser", "links", "links2", "elinks", "lynx", "w3m"})


def ui_args(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000,
            workers: int | None = None) -> list[str]:
    """The argv of the MLflow UI server for `tracking_uri`."""
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port)]
    return args + (["--workers", str(workers)] if workers else [])


def ui_url(host: str, port: int) -> str:
    """Browser address of the server (0.0.0.0 / :: are shown as 127.0.0.1, IPv6 in brackets)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def runs_url(base_url: str, experiment_id: str, study: str | None = None) -> str:
    """The experiment's runs table in the UI's model-training view:
    ``BASE/#/experiments/<id>/runs?workflowType=machine_learning``; with `study`, filtered to the
    study's runs (parent and trials, tag ``mfsweep.study``) and sorted by run name, so that trials
    are listed next to their parent run instead of folded under it."""
    query = {"workflowType": MODEL_TRAINING_WORKFLOW}
    if study:
        query.update(searchFilter=f"tags.`mfsweep.study` = '{quote(study)}'",
                     orderByKey="tags.`mlflow.runName`", orderByAsc="true")
    exp = urllib.parse.quote(str(experiment_id), safe="")
    return f"{base_url}/#/experiments/{exp}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def lookup_experiment_id(base_url: str, name: str, timeout: float = 10.0) -> str | None:
    """Id of the active experiment `name` on the running server at `base_url`, or None (no such
    experiment, deleted, or the server did not say)."""
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{base_url}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                    timeout=timeout) as resp:
            exp = json.load(resp).get("experiment") or {}
    except (urllib.error.URLError, OSError, ValueError):  # 404 (HTTPError) when it does not exist
        return None
    if exp.get("lifecycle_stage", "active") != "active" or not exp.get("experiment_id"):
        return None
    return str(exp["experiment_id"])


def study_url(base_url: str, experiment: str | None, study: str | None = None) -> str:
    """`runs_url` of `experiment` when the server has it, else the UI's home page (`base_url`)."""
    exp_id = lookup_experiment_id(base_url, experiment) if experiment else None
    return runs_url(base_url, exp_id, study) if exp_id else base_url


def ui_env(jobs: bool = False) -> dict[str, str]:
    """Environment for the server. MLflow's job runner (a pool of huey workers serving GenAI
    features such as LLM judges) is switched off unless `jobs`: browsing runs does not need it."""
    env = dict(os.environ)
    if not jobs:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def browser_available(env: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether a graphical browser can be opened from here: never in CI (``$CI``); where
    ``$BROWSER`` names one (e.g. a remote editor's helper); on macOS and Windows; elsewhere only
    with a display (``$DISPLAY`` or ``$WAYLAND_DISPLAY``)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if _truthy(env.get("CI")):
        return False
    if env.get("BROWSER") or platform == "darwin" or platform.startswith(("win", "cygwin")):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _open(url: str) -> None:
    try:
        browser = webbrowser.get()
        if Path(getattr(browser, "name", "") or "").name in CONSOLE_BROWSERS:
            return
        browser.open(url)
    except Exception:  # noqa: BLE001 - a browser that fails to start must not stop the UI
        pass


def open_browser(url: str, env: dict[str, str] | None = None, platform: str | None = None,
                 background: bool = True) -> bool:
    """Open `url` in the user's browser if `browser_available`; returns whether it tried. The
    attempt runs in a daemon thread (some `webbrowser` launchers wait for the browser to exit), so
    it never blocks the server; text-mode browsers are skipped."""
    if not browser_available(env, platform):
        return False
    if background:
        threading.Thread(target=_open, args=(url,), name="mfsweep-open-browser", daemon=True).start()
    else:
        _open(url)
    return True


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, experiment: str | None = None,
               study: str | None = None, browser: bool = True, workers: int | None = None,
               timeout: float = 120.0) -> int:
    """Run the MLflow UI in the foreground until interrupted; returns its exit code.

    Once the server answers, prints the URL of `experiment`'s runs (filtered to `study`'s runs,
    `runs_url`; the UI's home page without an experiment or before the study has run) and opens
    it with `open_browser` unless `browser` is False.
    """
    base = ui_url(host, port)
    print(f"MLflow UI for {tracking_uri} on {base}: starting (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(ui_args(tracking_uri, host, port, workers), env=ui_env())
    try:
        try:
            wait_until_up(base + "/health", timeout, proc)
        except RuntimeError:  # the server exited (port in use, bad store): it said why
            return proc.wait()
        except TimeoutError:
            print(f"the MLflow UI did not answer within {timeout:.0f} s; still waiting on {base}", flush=True)
            return proc.wait()
        url = study_url(base, experiment, study)
        if experiment and url == base:
            print(f"experiment {experiment!r} is not in this store yet (run the study first)", flush=True)
        print(f"study runs: {url}" if url != base else f"MLflow UI: {url}", flush=True)
        if browser and open_browser(url):
            print("opened in your browser (--no-browser to skip)", flush=True)
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
    The study's runs page is `study_url(url, experiment, study)`.
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
