"""The MLflow tracking store unreachable: at start (exit 2 before anything runs) and mid-study (writes
journaled in <storage>/<study>/mlflow_pending, replayed when it is back or by the next `mfsweep run`;
afterwards every metric is in the store exactly once).

- in-process: a StudyTracker whose MLflow client goes down between two calls (connection refused,
  as MLflow's HTTP client raises it), including mid-way through a trial's final writes;
- end to end: a loopback `mlflow server` killed after the first trial reported, the study finishing
  with it down, the server restarted on the same port and the same command run again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mfsweep.sweep import tracking
from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.study import parse_study
from mfsweep.sweep.tracking import StudyTracker

ROOT = Path(__file__).resolve().parents[2]
TOY = {"data": {"name": "moons", "num_train": 1000, "num_test": 300},
       "model": {"backbone": "mlp", "hidden_dim": 16, "depth": 1},
       "train": {"steps": 100, "batch_size": 64, "checkpoint_every": 50, "log_every": 10, "warmup_steps": 5}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---- down at start ---------------------------------------------------------------------------------
def test_server_down_at_start_exits_2_before_anything(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    study = tmp_path / "down.yaml"
    study.write_text(yaml.safe_dump({"name": "down", "storage": str(tmp_path / "ray"), "base": TOY,
                                     "axes": {"meanflow.frac_r_neq_t": [0.0]}, "seeds": [0]}))
    proc = subprocess.run([sys.executable, "-m", "mfsweep.cli", "run", str(study), "--tracking-uri", uri,
                           "--num-cpus", "1"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: MLflow tracking server at " + uri), proc.stderr
    assert "unreachable" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "ray").exists(), "nothing written to the storage folder"
    assert "Ray" not in proc.stderr and not list(tmp_path.glob("*.db"))


def test_check_tracking_accepts_any_http_answer(tmp_path):
    """A server that answers (here with 404 on /health) is reachable; refused or silent ones are not."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracking.check_tracking(f"http://127.0.0.1:{server.server_address[1]}")  # 501 / 404: an answer
    finally:
        server.shutdown()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)  # accepts the TCP connection but never answers
    try:
        with pytest.raises(tracking.TrackingUnreachable, match="timed out"):
            tracking.check_tracking(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
    finally:
        silent.close()
    tracking.check_tracking(f"sqlite:///{tmp_path}/x.db")  # not probed
    assert not (tmp_path / "x.db").exists()


# ---- down mid-study, in process --------------------------------------------------------------------
class Flaky:
    """An MlflowClient stand-in that fails like a dead HTTP server while ``down`` (or on a chosen call)."""

    def __init__(self, client):
        self.client, self.down, self.fail_on, self.calls = client, False, None, []

    def __getattr__(self, name):
        real = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            if self.down or self.fail_on == name:
                if self.fail_on == name:
                    self.fail_on = None  # fail once
                try:
                    raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
                except requests.exceptions.ConnectionError:
                    raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed "
                                          "with exception Max retries exceeded") from None
            return real(*args, **kwargs)
        return call


STUDY = {"name": "offline", "base": {"data": {"name": "moons"}, "model": {"hidden_dim": 16, "depth": 1},
                                     "train": {"steps": 50}},
         "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]}, "seeds": [0], "eval": {"nfe": [1], "num_samples": 64}}


def _outputs(tmp_path: Path, trial_id: str) -> Path:
    out = tmp_path / "out" / trial_id
    (out / "samples").mkdir(parents=True)
    (out / "config.yaml").write_text(f"name: {trial_id}\n")
    (out / "metrics.json").write_text(json.dumps({"status": "finished"}))
    np.save(out / "samples" / "nfe_1.npy", np.zeros((4, 2), np.float32))
    return out


def _final(step=50):
    return {"step": step, "phase": "final", "status": "finished", "time/train_s": 1.0, "final/swd/nfe_1": 0.25,
            "final/num_samples": 64.0}


def _tracker(uri, plan) -> tuple[StudyTracker, Flaky]:
    tracker = StudyTracker(uri, plan)
    flaky = Flaky(tracker.client)
    tracker.client = flaky
    return tracker, flaky


def _check_store(uri: str, parent: str, trial_ids: list[str]) -> MlflowClient:
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["mfsweep.trial_id"] for r in runs) == sorted(trial_ids), "one child per trial"
    for run in runs:
        rid = run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
        assert [m.step for m in client.get_metric_history(rid, "train/loss")] == [10, 20, 30, 40, 50]
        assert [m.step for m in client.get_metric_history(rid, "eval/swd/nfe_1")] == [25]
        assert len(client.get_metric_history(rid, "final/swd/nfe_1")) == 1
        assert len(client.get_metric_history(rid, "time/train_s")) == 1
        arts = {a.path for a in client.list_artifacts(rid)} | {a.path for a in client.list_artifacts(rid, "samples")}
        assert {"config.yaml", "metrics.json", "samples/nfe_1.npy"} <= arts
    return client


def _trial(tracker, spec, tmp_path, steps, flaky=None, down_after=None):
    tracker.trial_started(spec)
    for step in steps:
        tracker.trial_result(spec, {"step": step, "phase": "train", "train/loss": 1.0 / step})
        if step == 20:
            tracker.trial_result(spec, {"step": 25, "phase": "eval", "eval/swd/nfe_1": 0.5})
        if down_after is not None and step == down_after:
            tracker.flush()
            flaky.down = True


def test_down_mid_study_kept_and_logged_on_rerun(tmp_path, monkeypatch, capsys):
    plan = make_plan(parse_study({**STUDY, "storage": str(tmp_path / "ray")}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker, flaky = _tracker(uri, plan)
    parent, _ = tracker.open_parent("exec-1", "name: offline\n", None)
    a, b = plan.trials
    _trial(tracker, a, tmp_path, [10, 20, 30, 40, 50], flaky, down_after=20)  # the server dies after step 20
    tracker.trial_complete(a, _final(), _outputs(tmp_path, a.trial_id), "finished")
    _trial(tracker, b, tmp_path, [10, 20, 30, 40, 50])  # b's run could not even be created
    tracker.trial_complete(b, _final(), _outputs(tmp_path, b.trial_id), "finished")
    tracker.flush()
    assert tracker.children() is None, "the store is unreachable"
    tracker.mark_unfinished_stopped()
    tracker.close_parent("FINISHED", [{"trial_id": a.trial_id, "status": "finished"}])
    assert tracker.offline
    err = capsys.readouterr().err
    journal = tmp_path / "ray" / "offline" / "mlflow_pending" / "journal.json"
    assert f"MLflow at {uri} unreachable" in err and str(journal) in err and "on rerun" in err
    assert journal.is_file()
    shutil.rmtree(tmp_path / "out")  # the trials' folders may be gone by the rerun: the journal has copies
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(tracker.child(a), "train/loss")] == [10, 20]

    rerun = StudyTracker(uri, plan)  # the next `mfsweep run`: the server is back
    assert not rerun.offline and not journal.exists() and not journal.parent.exists()
    assert "logged" in capsys.readouterr().err
    rerun.open_parent("exec-1", "name: offline\n", None)
    rerun.close_parent("FINISHED", [])
    _check_store(uri, parent, [a.trial_id, b.trial_id])


def test_down_then_back_in_the_same_process(tmp_path, monkeypatch):
    """The server comes back while the study runs: the journal drains on a later event; a trial's
    final writes that failed half-way (metrics logged, artifacts not) are replayed without doubling."""
    monkeypatch.setattr(tracking, "RETRY_S", 0.0)
    plan = make_plan(parse_study({**STUDY, "storage": str(tmp_path / "ray")}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker, flaky = _tracker(uri, plan)
    parent, _ = tracker.open_parent("exec-1", "name: offline\n", None)
    a, b = plan.trials
    _trial(tracker, a, tmp_path, [10, 20, 30, 40, 50])
    flaky.fail_on = "log_artifact"  # the final metrics are in, the first artifact upload fails
    tracker.trial_complete(a, _final(), _outputs(tmp_path, a.trial_id), "finished")
    assert tracker.offline and (tmp_path / "ray" / "offline" / "mlflow_pending" / "journal.json").is_file()
    flaky.down = True
    _trial(tracker, b, tmp_path, [10, 20, 30])
    assert tracker.offline
    flaky.down = False
    for step in (40, 50):
        tracker.trial_result(b, {"step": step, "phase": "train", "train/loss": 1.0 / step})
    assert not tracker.offline, "drained on the next event once the store answered"
    assert not (tmp_path / "ray" / "offline" / "mlflow_pending" / "journal.json").exists()
    tracker.trial_complete(b, _final(), _outputs(tmp_path, b.trial_id), "finished")
    tracker.close_parent("FINISHED", [])
    assert not (tmp_path / "ray" / "offline" / "mlflow_pending").exists(), "nothing left pending"
    _check_store(uri, parent, [a.trial_id, b.trial_id])


# ---- down mid-study, end to end --------------------------------------------------------------------
def _start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.time() + 300
    while True:
        try:
            MlflowClient(f"http://127.0.0.1:{port}").search_experiments(max_results=1)
            return server
        except Exception:
            if time.time() > end or server.poll() is not None:
                os.killpg(server.pid, signal.SIGKILL)
                raise
            time.sleep(1)


class Relay:
    """The address the driver knows the tracking server by: an HTTP relay in front of a loopback
    `mlflow server`. ``down()`` closes its port (connection refused, as for a dead server); it goes
    down by itself right after relaying the first batch of training metrics. ``up()`` reopens it.
    (Restarting `mlflow server` itself costs a minute of imports on a loaded CI machine.)"""

    def __init__(self, upstream: int):
        import http.server

        self.upstream, self.port, self.server, self.cut_after_first_metrics = upstream, _free_port(), None, True
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self):
                import http.client

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", relay.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()
                if relay.cut_after_first_metrics and self.path.endswith("/runs/log-batch") and b"train/loss" in body:
                    relay.cut_after_first_metrics = False
                    threading.Thread(target=relay.down).start()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        self.handler = Handler
        self.up()

    def up(self) -> None:
        import http.server

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.mark.slow
def test_server_gone_mid_study_then_rerun_logs_everything_once(tmp_path):
    upstream = _free_port()
    steps = 300
    study = tmp_path / "midway.yaml"
    study.write_text(yaml.safe_dump({
        "name": "midway", "storage": str(tmp_path / "ray"),
        "base": {**TOY, "train": {**TOY["train"], "steps": steps, "log_every": 50, "checkpoint_every": 100}},
        "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]}, "seeds": [0], "max_concurrent_trials": 1,
        "eval": {"nfe": [1], "num_samples": 100}}, sort_keys=False))
    server = _start_server(tmp_path, upstream)
    relay = Relay(upstream)
    uri = f"http://127.0.0.1:{relay.port}"
    cmd = [sys.executable, "-m", "mfsweep.cli", "run", str(study), "--tracking-uri", uri, "--num-cpus", "1"]
    try:
        first = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
        out = first.stdout + first.stderr
        assert relay.server is None and not relay.cut_after_first_metrics, "the server went away mid-study"
        journal = tmp_path / "ray" / "midway" / "mlflow_pending" / "journal.json"
        # the trials ran to the end; MLflow's part waits for the rerun: "interrupted, rerun" (130)
        assert first.returncode == 130, out
        assert f"MLflow at {uri} unreachable" in first.stderr and str(journal) in first.stderr, out
        assert "on rerun" in first.stderr and "Traceback" not in out, out
        assert journal.is_file()
        [exp_dir] = [p for p in (tmp_path / "ray" / "midway").iterdir() if p.is_dir() and p.name != "mlflow_pending"]
        ckpts = sorted(exp_dir.glob("*/train/checkpoint.pt"))
        assert len(ckpts) == 2, "both trials trained to the end with the server unreachable"
        before = {p: p.stat().st_mtime_ns for p in ckpts}
        client = MlflowClient(uri.replace(str(relay.port), str(upstream)))
        exp = client.get_experiment_by_name("midway")
        partial = client.search_runs([exp.experiment_id], "tags.`mfsweep.role` = 'trial'")
        assert len(partial) == 1 and partial[0].info.status == "RUNNING", "only what came before the cut"

        relay.up()  # back, same address and store
        second = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "that an earlier run of this study kept in " + str(journal) in second.stderr, second.stderr
        assert not journal.exists()
        assert {p: p.stat().st_mtime_ns for p in ckpts} == before, "no trial trained again"

        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("mfsweep.role") == "study"]
        children = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(r.data.tags["mfsweep.trial_id"][:4] for r in children) == ["t000", "t001"], "one run per trial"
        for run in children:
            rid = run.info.run_id
            assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
            assert [m.step for m in client.get_metric_history(rid, "train/loss")] == list(range(50, steps + 1, 50))
            for key in ("final/swd/nfe_1", "time/train_s"):
                assert [m.step for m in client.get_metric_history(rid, key)] == [steps], key
            assert "samples/nfe_1.npy" in {a.path for a in client.list_artifacts(rid, "samples")}
    finally:
        relay.down()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_metrics_buffered_by_a_killed_driver_are_logged_by_the_next_run(tmp_path, capsys):
    """The driver sends metrics every few seconds; a driver killed (SIGKILL) in between leaves them
    in <storage>/<study>/mlflow_buffer.jsonl, and the next run logs them, once."""
    plan = make_plan(parse_study({**STUDY, "storage": str(tmp_path / "ray")}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "ray" / "offline").mkdir(parents=True)  # the study's folder, as the runner makes it
    tracker = StudyTracker(uri, plan)
    parent, _ = tracker.open_parent("exec-1", "name: offline\n", None)
    a = plan.trials[0]
    tracker.trial_started(a)
    for step in (10, 20, 30):
        tracker.trial_result(a, {"step": step, "phase": "train", "train/loss": 1.0 / step})
    rid = tracker.child(a)
    buffer = tmp_path / "ray" / "offline" / "mlflow_buffer.jsonl"
    assert len(buffer.read_text().splitlines()) == 3
    client = MlflowClient(uri)
    assert client.get_metric_history(rid, "train/loss") == [], "still in the driver's buffer"
    with open(buffer, "a") as f:
        f.write('{"uri": "sqlite:')  # the kill cut a line short
    del tracker  # killed: never flushed

    rerun = StudyTracker(uri, plan)
    assert f"logged 3 MLflow record(s) that an earlier run of this study kept in {buffer}" in capsys.readouterr().err
    assert not buffer.exists() and not (buffer.parent / "mlflow_pending").exists()
    assert [m.step for m in client.get_metric_history(rid, "train/loss")] == [10, 20, 30]
    rerun.open_parent("exec-1", "name: offline\n", None)
    for step in (20, 30, 40, 50):  # the trial resumed from an earlier checkpoint reports 20 and 30 again
        rerun.trial_result(a, {"step": step, "phase": "train", "train/loss": 1.0 / step})
    rerun.flush()
    assert not buffer.exists()
    assert [m.step for m in client.get_metric_history(rid, "train/loss")] == [10, 20, 30, 40, 50], "each step once"
