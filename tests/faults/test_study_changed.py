"""Fault: the study file changed since its last execution (here ``base.train.lr``).

The rerun refuses with exit 2, says to use ``--restart`` and writes nothing; ``--restart`` starts
a new execution with a new parent run and keeps the old parent run and its children as they were.
A one-trial study of 100 steps, on a local Ray with 2 CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

STUDY = {
    "base": {"data": {"name": "moons", "num_train": 1000, "num_test": 200},
             "model": {"backbone": "mlp", "hidden_dim": 16, "depth": 1},
             "train": {"steps": 100, "batch_size": 32, "checkpoint_every": 50, "log_every": 25, "warmup_steps": 5,
                       "lr": 1e-3}},
    "axes": {"meanflow.frac_r_neq_t": [0.5]}, "seeds": [0],
    "eval": {"nfe": [1], "num_samples": 100}}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write(path: Path, storage: Path, lr: float) -> None:
    raw = json.loads(json.dumps(STUDY))
    raw["base"]["train"]["lr"] = lr
    path.write_text(yaml.safe_dump({"name": "changed", "storage": str(storage), **raw}, sort_keys=False))


def _snapshot(uri: str) -> dict:
    """Every run of the study: id → (role, status, parent, params, metric history of train/loss)."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("changed").experiment_id])
    return {r.info.run_id: (r.data.tags.get("mfsweep.role"), r.info.status, r.data.tags.get("mlflow.parentRunId"),
                            dict(r.data.params),
                            [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/loss")])
            for r in runs}


def test_changed_study_refuses_then_restart_keeps_the_old_runs(tmp_path):
    study, storage = tmp_path / "changed.yaml", tmp_path / "ray"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "mfsweep.cli", "run", str(study), "--num-cpus", "2", "--tracking-uri", uri]

    def run(*extra):
        return subprocess.run([*cmd, *extra], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)

    _write(study, storage, 1e-3)
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    before = _snapshot(uri)
    assert sorted(role for role, *_ in before.values()) == ["study", "trial"]
    execution = (storage / "changed" / "execution.json").read_text()

    _write(study, storage, 2e-3)  # base.train.lr changed
    refused = run()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    error = " ".join(refused.stderr.split())
    assert "the study changed since execution" in error and "--restart" in error
    assert _snapshot(uri) == before, "nothing was written to the tracking store"
    assert (storage / "changed" / "execution.json").read_text() == execution

    restarted = run("--restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    after = _snapshot(uri)
    assert {k: after[k] for k in before} == before, "the old parent run and its child are intact"
    new = {k: v for k, v in after.items() if k not in before}
    assert sorted(role for role, *_ in new.values()) == ["study", "trial"], "a new parent run with its own child"
    (new_parent,) = [k for k, v in new.items() if v[0] == "study"]
    (new_child,) = [v for v in new.values() if v[0] == "trial"]
    assert new_child[1] == "FINISHED" and new_child[2] == new_parent and new_child[3]["train.lr"] == "0.002"
    assert [s for s, _ in new_child[4]] == [25, 50, 75, 100], "trained from scratch, not resumed"
    assert len([p for p in (storage / "changed").iterdir() if p.is_dir()]) == 2, "the old Ray experiment is kept"
    assert json.loads((storage / "changed" / "execution.json").read_text())["parent_run_id"] == new_parent
