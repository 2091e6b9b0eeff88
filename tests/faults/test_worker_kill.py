"""Fault: a trial's worker process is SIGKILLed mid-training (local Ray, 2 CPUs, `mfsweep run` as a
subprocess). With ``max_failures: 1`` Tune retries the trial, which continues from its last
checkpoint and finishes; MLflow keeps one child run whose metric history is continuous (every log
step once, none missing); the console gets one line about the retry and no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from mfsweep.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

STEPS, CKPT_EVERY, LOG_EVERY = 1200, 400, 100
STUDY = {
    "base": {"data": {"name": "moons", "num_train": 2000, "num_test": 500},
             "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
             "train": {"steps": STEPS, "batch_size": 64, "checkpoint_every": CKPT_EVERY, "log_every": LOG_EVERY,
                       "warmup_steps": 10}},
    "axes": {"meanflow.frac_r_neq_t": [0.5]}, "seeds": [0], "max_failures": 1,
    "eval": {"nfe": [1], "num_samples": 200}}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str):
    end = time.time() + timeout
    while time.time() < end:
        if (value := predicate()):
            return value
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early with {proc.returncode} while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker_kill")
    study = tmp / "wk.yaml"
    study.write_text(yaml.safe_dump({"name": "wk", "storage": str(tmp / "ray"), **STUDY}, sort_keys=False))
    uri = f"sqlite:///{tmp}/mlflow.db"
    log = tmp / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mfsweep.cli", "run", str(study), "--num-cpus", "2",
                                 "--tracking-uri", uri], cwd=tmp, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            # the first checkpoint handed to Tune (after train/checkpoint.pt is written)
            tune_ckpt = _wait_for(lambda: next((tmp / "ray" / "wk").glob("*/t000-*/checkpoint_*/checkpoint.pt"), None),
                                  300, proc, "the trial's first checkpoint")
            trial = tune_ckpt.parent.parent / "train"
            pid = int((trial / "worker.pid").read_text().split()[0])
            assert pid not in (proc.pid, os.getpid())
            os.kill(pid, signal.SIGKILL)  # the trial's worker only; the driver and Ray stay up
            killed_at = int(ckpt.load(trial / "checkpoint.pt")["step"])
            rc = proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {"rc": rc, "output": log.read_text(), "uri": uri, "killed_at": killed_at, "pid": pid, "trial": trial}


def test_killed_worker_is_retried_from_its_checkpoint(killed_run):
    out = killed_run["output"]
    assert killed_run["rc"] == 0, out
    assert CKPT_EVERY <= killed_run["killed_at"] < STEPS and killed_run["killed_at"] % CKPT_EVERY == 0
    assert int((killed_run["trial"] / "worker.pid").read_text().split()[0]) != killed_run["pid"], \
        "the retry ran in a new worker process"

    client = MlflowClient(killed_run["uri"])
    exp = client.get_experiment_by_name("wk")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
    assert len(runs) == 2 and len(children) == 1, "one parent, one child: the retry reused the trial's run"
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
    assert run.data.tags["mfsweep.resumed_from"] == str(killed_run["killed_at"]), "continued from its checkpoint"
    for key in ("train/loss", "train/mse", "train/lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), f"{key}: every log step exactly once"
    assert "final/swd/nfe_1" in run.data.metrics


def test_console_says_one_line_and_no_traceback(killed_run):
    out = killed_run["output"]
    assert "Traceback" not in out, out
    text = " ".join(out.split())  # the console may wrap long lines
    assert text.count("retry 1 of 1") == 1, out
    # the step is the last checkpoint reported to the driver (Tune's result may still be on its way
    # when the worker dies: then the line says "from its last checkpoint")
    line = rf"trial t000-\S+ lost its worker process \(killed or crashed\); retry 1 of 1 from " \
           rf"(step {killed_run['killed_at']}\b|its last checkpoint)"
    assert re.search(line, text), out
