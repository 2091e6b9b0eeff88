"""Concurrent drivers: one study runs in one driver at a time (an flock on <storage>/<study>/.lock,
freed when its holder dies, SIGKILL included), and two different studies share one SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mfsweep.config import ConfigError
from mfsweep.sweep.lock import StudyBusy, acquire

HOLD = ("import sys, time; from mfsweep.sweep.lock import acquire; lock = acquire(sys.argv[1], 'held'); "
        "print('held', flush=True); time.sleep(600)")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    study_dir = tmp_path / "store" / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(study_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyBusy) as err:
            acquire(str(study_dir), "held")
        msg = str(err.value)
        assert isinstance(err.value, ConfigError), "exit 2 through the CLI's ConfigError handler"
        assert "\n" not in msg and f"pid {holder.pid} on {socket.gethostname()}, started 20" in msg, msg
        assert str(study_dir / ".lock") in msg and "already running" in msg
    finally:
        holder.send_signal(signal.SIGKILL)  # a driver killed hard leaves its lock file behind ...
        holder.wait()
    assert (study_dir / ".lock").exists()
    with acquire(str(study_dir), "held") as lock:  # ... which does not block the rerun
        assert json.loads((study_dir / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(StudyBusy):  # a second open file description in this process is refused too
            acquire(str(study_dir), "held")
    assert lock.fd is None
    acquire(str(study_dir), "held").release()  # released: free again


def test_uri_storage_is_not_locked(tmp_path):
    lock = acquire("s3://bucket/runs/study", "study")
    assert lock.fd is None and lock.path is None
    lock.release()


def _study(tmp_path: Path, name: str, steps: int, log_every: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "storage": str(tmp_path / "ray"),
        "base": {"data": {"name": "moons", "num_train": 1000, "num_test": 300},
                 "model": {"backbone": "mlp", "hidden_dim": 16, "depth": 1},
                 "train": {"steps": steps, "batch_size": 64, "checkpoint_every": 50, "log_every": log_every,
                           "warmup_steps": 5}},
        "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]}, "seeds": [0], "max_concurrent_trials": 1,
        "eval": {"nfe": [1], "num_samples": 100, "every_steps": 50, "num_samples_during": 50}}, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_studies_share_a_sqlite_store_and_a_second_driver_of_one_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    alpha, beta = _study(tmp_path, "alpha", 1500, 50), _study(tmp_path, "beta", 100, 10)

    def cmd(study):
        return [sys.executable, "-m", "mfsweep.cli", "run", str(study), "--tracking-uri", uri, "--num-cpus", "1"]

    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("alpha", "beta")}
    procs = {n: subprocess.Popen(cmd(s), cwd=tmp_path, env=_env(), stdout=logs[n], stderr=subprocess.STDOUT,
                                 start_new_session=True) for n, s in (("alpha", alpha), ("beta", beta))}
    try:
        end = time.time() + 300
        while True:  # alpha is training (a child run is open): start alpha a second time
            try:
                client = MlflowClient(uri)
                exp = client.get_experiment_by_name("alpha")
                if exp and client.search_runs([exp.experiment_id], "tags.`mfsweep.role` = 'trial'"):
                    break
            except Exception:  # the store is being created
                pass
            assert procs["alpha"].poll() is None and time.time() < end, (tmp_path / "alpha.log").read_text()
            time.sleep(0.5)
        again = subprocess.run(cmd(alpha), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        codes = {n: p.wait(timeout=600) for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outs = {n: (tmp_path / f"{n}.log").read_text() for n in procs}
    assert again.returncode == 2, again.stdout + again.stderr
    [line] = [ln for ln in again.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: study 'alpha' is already running (pid ")
    assert f"pid {procs['alpha'].pid} on {socket.gethostname()}" in line, line
    assert codes == {"alpha": 0, "beta": 0}, outs
    for name, out in outs.items():
        assert "database is locked" not in out and "Traceback" not in out, out
    client = MlflowClient(uri)
    for name in ("alpha", "beta"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        parents = [r for r in runs if r.data.tags.get("mfsweep.role") == "study"]
        children = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", "no second parent run"
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        steps = 1500 if name == "alpha" else 100
        every = 50 if name == "alpha" else 10
        for r in children:
            history = client.get_metric_history(r.info.run_id, "train/loss")
            assert [m.step for m in history] == list(range(every, steps + 1, every)), (name, "each step once")


def test_a_run_that_wrote_nothing_leaves_no_folder(tmp_path):
    """Refused input after the lock was taken (e.g. check_storage): no study folder is left behind;
    a folder that holds more than the lock is kept."""
    lock = acquire(str(tmp_path / "store" / "new"), "new")
    assert (tmp_path / "store" / "new" / ".lock").exists()
    lock.release()
    assert not (tmp_path / "store" / "new").exists()
    lock = acquire(str(tmp_path / "store" / "new"), "new")
    (tmp_path / "store" / "new" / "execution.json").write_text("{}")
    lock.release()
    assert sorted(p.name for p in (tmp_path / "store" / "new").iterdir()) == [".lock", "execution.json"]
