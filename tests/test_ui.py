"""`mfsweep ui` without MLflow's server or a browser: the study runs URL, when a browser is (never)
opened, the command's wiring, and the experiment kind tag mfsweep writes (MLflow 3's model-training
type). The MLflow UI itself, in headless Chromium: tests/test_report_browser.py."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
import urllib.parse
import webbrowser

import pytest

import analysis.ui as ui

# ---- the URL -------------------------------------------------------------------------------------


def _split(url: str) -> tuple[str, str, dict[str, str]]:
    """(base, hash route, query of the hash route) of a UI URL."""
    base, _, fragment = url.partition("/#")
    route, _, query = fragment.partition("?")
    return base, route, dict(urllib.parse.parse_qsl(query, strict_parsing=True))


def test_runs_url_is_the_runs_tab_in_the_model_training_view():
    url = ui.runs_url("http://127.0.0.1:5000", "12")
    assert url == "http://127.0.0.1:5000/#/experiments/12/runs?workflowType=machine_learning"


def test_runs_url_of_a_study_lists_its_runs_sorted_by_name():
    base, route, query = _split(ui.runs_url("http://h:1", "3", "it's_a_study"))
    assert (base, route) == ("http://h:1", "/experiments/3/runs")
    assert query == {"workflowType": "machine_learning",
                     "searchFilter": "tags.`mfsweep.study` = 'it\\'s_a_study'",
                     "orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}
    # everything after the route is percent-encoded (the browser's hash router decodes it)
    assert " " not in ui.runs_url("http://h:1", "3", "x") and "`" not in ui.runs_url("http://h:1", "3", "x")


def test_ui_url_shows_a_wildcard_host_as_localhost():
    assert ui.ui_url("0.0.0.0", 5000) == "http://127.0.0.1:5000"
    assert ui.ui_url("example.org", 8080) == "http://example.org:8080"
    assert ui.ui_url("::1", 5000) == "http://[::1]:5000"


# ---- the server's experiment id ------------------------------------------------------------------

class _FakeMlflow(http.server.BaseHTTPRequestHandler):
    experiments = {"study-exp": {"experiment_id": "7", "name": "study-exp", "lifecycle_stage": "active"},
                   "gone": {"experiment_id": "8", "name": "gone", "lifecycle_stage": "deleted"}}

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        name = urllib.parse.parse_qs(url.query).get("experiment_name", [""])[0]
        if url.path != "/api/2.0/mlflow/experiments/get-by-name" or name not in self.experiments:
            body, code = {"error_code": "RESOURCE_DOES_NOT_EXIST"}, 404
        else:
            body, code = {"experiment": self.experiments[name]}, 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_study_url_asks_the_server_for_the_experiment(fake_server):
    assert ui.lookup_experiment_id(fake_server, "study-exp") == "7"
    assert ui.study_url(fake_server, "study-exp", "s") == ui.runs_url(fake_server, "7", "s")
    # not there yet, deleted, or no experiment named: the UI's home page
    assert ui.lookup_experiment_id(fake_server, "nope") is None
    assert ui.lookup_experiment_id(fake_server, "gone") is None
    assert ui.study_url(fake_server, "nope", "s") == fake_server
    assert ui.study_url(fake_server, None) == fake_server
    assert ui.lookup_experiment_id("http://127.0.0.1:9", "study-exp", timeout=2) is None  # nothing listening


# ---- the browser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("env, platform, expected", [
    ({}, "linux", False),  # headless Linux: no display
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"BROWSER": "/opt/editor/browser.sh"}, "linux", True),  # e.g. a remote editor's helper
    ({"DISPLAY": ":0", "CI": "true"}, "linux", False),  # CI never opens one
    ({"CI": "1"}, "darwin", False),
    ({"CI": "false", "DISPLAY": ":0"}, "linux", True),
    ({}, "darwin", True),
    ({}, "win32", True),
])
def test_browser_available(env, platform, expected):
    assert ui.browser_available(env, platform) is expected


class _Browser:
    def __init__(self, name="firefox", block: threading.Event | None = None):
        self.name, self.block, self.opened = name, block, []

    def open(self, url, *args, **kwargs):
        self.opened.append(url)
        if self.block is not None:
            self.block.wait(10)
        return True


def _no_browser_lookup(*args, **kwargs):
    raise AssertionError("webbrowser consulted although no browser may be opened")


def test_open_browser_headless_never_touches_webbrowser(monkeypatch):
    monkeypatch.setattr(webbrowser, "get", _no_browser_lookup)
    assert ui.open_browser("http://x", env={}, platform="linux", background=False) is False
    assert ui.open_browser("http://x", env={"CI": "true", "DISPLAY": ":0"}, platform="linux") is False


def test_open_browser_opens_the_url_and_skips_text_browsers(monkeypatch):
    browser = _Browser()
    monkeypatch.setattr(webbrowser, "get", lambda *a: browser)
    assert ui.open_browser("http://x/#/experiments/1/runs", env={"DISPLAY": ":0"}, platform="linux",
                           background=False)
    assert browser.opened == ["http://x/#/experiments/1/runs"]
    console = _Browser("/usr/bin/w3m")
    monkeypatch.setattr(webbrowser, "get", lambda *a: console)
    ui.open_browser("http://x", env={"DISPLAY": ":0"}, platform="linux", background=False)
    assert console.opened == []

    def no_browser(*args):
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    ui.open_browser("http://x", env={"DISPLAY": ":0"}, platform="linux", background=False)  # no raise


def test_open_browser_does_not_wait_for_the_browser(monkeypatch):
    release = threading.Event()
    browser = _Browser(block=release)  # a launcher that waits for the browser to exit
    monkeypatch.setattr(webbrowser, "get", lambda *a: browser)
    start = time.monotonic()
    try:
        assert ui.open_browser("http://x", env={"DISPLAY": ":0"}, platform="linux")
        assert time.monotonic() - start < 1.0
    finally:
        release.set()


# ---- ui_command with a stand-in server -----------------------------------------------------------

FAKE_SERVER = """
import http.server, json, sys, threading
if sys.argv[2] == "die":
    sys.exit(3)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"OK"
        else:  # the experiment lookup: answer, then stop (ui_command returns with this exit code)
            body = json.dumps({"experiment": {"experiment_id": "42", "lifecycle_stage": "active"}}).encode()
            threading.Thread(target=self.server.shutdown).start()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    """`ui_args` replaced by a small HTTP server: ``mode`` "serve" or "die" (exits at once)."""
    script = tmp_path / "fake_mlflow.py"
    script.write_text(FAKE_SERVER)
    mode = {"value": "serve"}
    monkeypatch.setattr(ui, "ui_args", lambda uri, host, port, workers=None:
                        [sys.executable, str(script), str(port), mode["value"]])
    monkeypatch.setattr(webbrowser, "get", _no_browser_lookup)
    return mode


def test_ui_command_prints_the_study_runs_url_and_respects_no_browser(stand_in, capfd, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")  # a browser would be available: --no-browser must win
    monkeypatch.delenv("CI", raising=False)
    port = ui.free_port()
    code = ui.ui_command("sqlite:////tmp/x.db", port=port, experiment="study-exp", study="s", browser=False,
                         timeout=30)
    out = capfd.readouterr().out
    assert code == 0, out
    assert f"study runs: {ui.runs_url(f'http://127.0.0.1:{port}', '42', 's')}\n" in out


def test_ui_command_headless_prints_and_does_not_open(stand_in, capfd, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code = ui.ui_command("sqlite:////tmp/x.db", port=ui.free_port(), experiment="study-exp", study="s", timeout=30)
    out = capfd.readouterr().out
    assert code == 0 and "study runs: http://127.0.0.1:" in out and "opened in your browser" not in out


def test_ui_command_returns_the_server_exit_code(stand_in, capfd):
    stand_in["value"] = "die"
    assert ui.ui_command("sqlite:////tmp/x.db", port=ui.free_port(), experiment="e", timeout=30) == 3
    assert "study runs" not in capfd.readouterr().out


# ---- the command line ----------------------------------------------------------------------------

def test_cli_ui_passes_the_study_and_no_browser(tmp_path, monkeypatch):
    from mfsweep.cli import build_parser, main

    calls = []
    monkeypatch.setattr(ui, "ui_command", lambda uri, **kw: calls.append((uri, kw)) or 0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(f"name: abl\ntracking: {{uri: 'sqlite:///{tmp_path}/m.db', experiment: abl-exp}}\n")
    assert main(["ui", str(study), "--no-browser", "--port", "5123", "--workers", "1"]) == 0
    assert calls[-1] == (f"sqlite:///{tmp_path}/m.db", dict(host="127.0.0.1", port=5123, experiment="abl-exp",
                                                            study="abl", browser=False, workers=1))
    assert main(["ui", str(study), "--smoke"]) == 0
    assert calls[-1][1]["experiment"] == "abl-exp_smoke" and calls[-1][1]["study"] == "abl_smoke"
    assert calls[-1][1]["browser"] is True
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    assert calls[-1][1]["experiment"] is None and calls[-1][1]["study"] is None
    assert build_parser().parse_args(["ui"]).no_browser is False


# ---- the experiment kind tag ---------------------------------------------------------------------

STUDY = {"name": "kind", "base": {"data": {"name": "moons"}, "model": {"hidden_dim": 16, "depth": 1},
                                  "train": {"steps": 10}},
         "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]}, "seeds": [0], "eval": {"nfe": [1], "num_samples": 16}}


def test_study_experiment_is_a_model_training_experiment(tmp_path):
    from mlflow import MlflowClient

    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import parse_study
    from mfsweep.sweep.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, StudyTracker

    assert (EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND) == ("mlflow.experimentKind", "custom_model_development")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    # created by mfsweep
    tracker = StudyTracker(uri, make_plan(parse_study(STUDY)))
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # made before (an older mfsweep, or by hand) without a kind: tagged on first use
    old = client.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())
    StudyTracker(uri, make_plan(parse_study({**STUDY, "tracking": {"experiment": "older"}})))
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # a kind someone chose (the UI's experiment type selector) is kept
    chosen = client.create_experiment("chosen", artifact_location=(tmp_path / "b").as_uri(),
                                      tags={EXPERIMENT_KIND_TAG: "finetuning"})
    StudyTracker(uri, make_plan(parse_study({**STUDY, "tracking": {"experiment": "chosen"}})))
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "finetuning"
    # every other run-side behaviour is unchanged: the study still tracks into its experiment
    parent, reused = tracker.open_parent("exec-1", "name: kind\n", None)
    assert not reused and client.get_run(parent).info.experiment_id == tracker.experiment_id

