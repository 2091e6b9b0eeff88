"""End to end on a local Ray (2 CPUs): `mfsweep run` as a subprocess, checked through MLflow.

- a tiny study in which one trial fails at run time: its data file is a corrupt .npy (it exists,
  so validation passes; loading it raises DataError inside the trial). The other trials finish,
  the failed one is FAILED in MLflow with its error, and the exit code is 3;
- a study whose driver is killed (SIGKILL of its process group) mid-trial, then resumed by running
  the same command: no duplicate runs, the finished trial is not trained again, the interrupted
  one continues from its checkpoint;
- the same against a real `mlflow server` on loopback (its URI given as $MLFLOW_TRACKING_URI);
- Optuna (TPE) with ASHA on the periodic evaluation metric.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOY = {"data": {"name": "moons", "num_train": 2000, "num_test": 500},
       "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
       "train": {"steps": 150, "batch_size": 64, "checkpoint_every": 50, "log_every": 25, "warmup_steps": 10}}


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cmd(study: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mfsweep.cli", "run", str(study), "--num-cpus", "2", *extra]


def _write(tmp_path: Path, name: str, raw: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "storage": str(tmp_path / "ray"), **raw}, sort_keys=False))
    return path


def _runs(uri: str, study: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mfsweep.role") == "study"]
    children = {r.data.tags["mfsweep.trial_id"]: r for r in runs if r.data.tags.get("mfsweep.role") == "trial"}
    return client, parents, children, len(runs)


def test_tiny_study_with_a_failing_trial(tmp_path):
    x = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
    np.save(tmp_path / "good.npy", x)
    (tmp_path / "corrupt.npy").write_bytes(b"this is not a numpy file")
    study = _write(tmp_path, "tiny", {
        "paper_table": "1a",
        "base": {**TOY, "data": {"name": "npy", "path": str(tmp_path / "good.npy")}},
        "axes": {"data.path": {"good": str(tmp_path / "good.npy"), "corrupt": str(tmp_path / "corrupt.npy")},
                 "meanflow.frac_r_neq_t": [0.0, 0.5]},
        "seeds": [0],
        "eval": {"nfe": [1, 2], "num_samples": 200, "every_steps": 75, "num_samples_during": 100}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(_cmd(study, "--tracking-uri", uri), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "t002-path=corrupt-frac_r_neq_t=0.0-seed=0 (failed)" in proc.stdout
    # off a terminal, the status line is printed after every trial end; the last one has them all
    assert "trials 4/4 · 2 finished, 0 stopped, 2 failed · 0 running · 0 pending" in proc.stdout
    assert "\x1b[" not in proc.stdout

    client, parents, children, n = _runs(uri, "tiny")
    assert len(parents) == 1 and n == 5
    parent = parents[0]
    assert json.loads(parent.data.tags["mfsweep.axes"]) == ["data.path", "meanflow.frac_r_neq_t", "seed"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"study.yaml", "trials.csv", "base_config.yaml"}
    good = children["t001-path=good-frac_r_neq_t=0.5-seed=0"]
    assert good.info.status == "FINISHED" and good.data.tags["mfsweep.status"] == "finished"
    assert good.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert good.data.tags["axis.data.path"] == "good" and good.data.tags["axis.meanflow.frac_r_neq_t"] == "0.5"
    assert good.data.params["meanflow.frac_r_neq_t"] == "0.5" and good.data.params["train.steps"] == "150"
    rid = good.info.run_id
    assert [m.step for m in client.get_metric_history(rid, "train/loss")] == [25, 50, 75, 100, 125, 150]
    assert [m.step for m in client.get_metric_history(rid, "eval/swd/nfe_1")] == [75]
    assert {"final/swd/nfe_1", "final/energy/nfe_2", "final/num_samples", "time/train_s"} <= set(good.data.metrics)
    arts = {a.path for a in client.list_artifacts(rid)} | {a.path for a in client.list_artifacts(rid, "samples")}
    assert {"config.yaml", "metrics.json", "samples/nfe_1.png", "samples/nfe_2.npy"} <= arts
    samples = np.load(client.download_artifacts(rid, "samples/nfe_1.npy", str(tmp_path)))
    assert samples.shape == (200, 2)
    corrupt = {tid: run for tid, run in children.items() if "path=corrupt" in tid}
    assert len(corrupt) == 2, list(children)
    for tid, run in corrupt.items():
        assert run.info.status == "FAILED" and run.data.tags["mfsweep.status"] == "failed"
        assert "DataError" in run.data.tags["mfsweep.error"] and "corrupt.npy" in run.data.tags["mfsweep.error"]

    # the analysis side reads the same store (analysis/ ships with mfsweep: a missing import fails)
    rep = subprocess.run([sys.executable, "-m", "mfsweep.cli", "report", str(study), "--tracking-uri", uri,
                          "--out", str(tmp_path / "report")], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert (tmp_path / "report" / "report.md").exists()


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early with {proc.returncode}")
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the study to make progress")


def _trial_files(exp: Path, trial_id: str) -> dict[str, int]:
    """mtime (ns) of the outputs a finished trial wrote; any retraining or re-evaluation rewrites them."""
    out = exp / trial_id / "train"
    names = ("checkpoint.pt", "metrics.json", "config.yaml", "samples/nfe_1.npy", "samples/nfe_1.png")
    return {n: (out / n).stat().st_mtime_ns for n in names}


def _run_record(client: MlflowClient, run) -> dict:
    """What MLflow holds of a trial: status, every metric's full history (step, value, timestamp)."""
    rid = run.info.run_id
    full = client.get_run(rid)
    return {"status": full.info.status, "tags": {k: v for k, v in full.data.tags.items() if k.startswith("mfsweep.")},
            "history": {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, k)]
                        for k in sorted(full.data.metrics)}}


def test_killed_driver_resumes_without_duplicates(tmp_path):
    from analysis.load import load_study, tidy
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import load_study as load_study_file
    from mfsweep.training.train import train

    study = _write(tmp_path, "resume", {
        "base": {**TOY, "train": {**TOY["train"], "steps": 3000, "checkpoint_every": 200, "log_every": 100}},
        "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]}, "seeds": [0], "max_concurrent_trials": 1,
        "eval": {"nfe": [1], "num_samples": 200}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first_id, second_id = "t000-frac_r_neq_t=0.0-seed=0", "t001-frac_r_neq_t=0.5-seed=0"

    def first_done_second_checkpointed() -> bool:
        # t000 done in MLflow (its final metric logged by the driver) and t001 past its first checkpoint
        if not any((tmp_path / "ray" / "resume").glob(f"*/{second_id}/train/checkpoint.pt")):
            return False
        try:
            _, _, children, _ = _runs(uri, "resume")
        except Exception:  # the store is being created
            return False
        done = children.get(first_id)
        return done is not None and done.info.status == "FINISHED"

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cmd(study, "--tracking-uri", uri), cwd=tmp_path, env=_env(tmp_path),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(first_done_second_checkpointed, 300, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone already if it exited early: that error is shown)
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-trial
        proc.wait()
    [exp] = [p for p in (tmp_path / "ray" / "resume").iterdir() if p.is_dir()]
    client, _, children, _ = _runs(uri, "resume")
    before_files = _trial_files(exp, first_id)
    before_run = _run_record(client, children[first_id])
    assert before_run["history"]["final/swd/nfe_1"] and before_run["history"]["train/loss"][-1][0] == 3000

    proc = subprocess.run(_cmd(study, "--tracking-uri", uri), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed execution" in proc.stdout
    client, parents, children, n = _runs(uri, "resume")
    assert len(parents) == 1 and len(children) == 2 and n == 3, "runs reused, not duplicated"
    logged = {}
    for tid, run in children.items():
        assert run.data.tags["mfsweep.status"] == "finished" and run.info.status == "FINISHED"
        logged[tid] = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(client.get_metric_history(run.info.run_id, "final/swd/nfe_1")) == 1, "final logged once"
    interrupted = children[second_id].data.tags
    assert 200 <= int(interrupted["mfsweep.resumed_from"]) < 3000, "continued from its checkpoint"
    # the finished trial was not trained (nor evaluated) again: its files and its MLflow run are untouched
    assert _trial_files(exp, first_id) == before_files
    assert _run_record(client, children[first_id])["history"] == before_run["history"]
    assert children[first_id].data.tags.get("mfsweep.resumed_from") in (None, "3000")  # never a retrain from < 3000

    # the resumed study reports what an uninterrupted run of the same trials gives (fixed seeds, CPU,
    # one torch thread per trial as in the study). t000 was trained once, uninterrupted (its files
    # above are untouched): its metrics.json is that run. t001 is trained again here, straight through.
    plan = make_plan(load_study_file(study)[0])
    df = tidy(load_study("resume", uri), phases=("final",))
    assert set(df["trial_id"]) == {t.trial_id for t in plan.trials} == {first_id, second_id}
    threads = torch.get_num_threads()
    try:
        straight = train(plan.by_id[second_id].config, tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    uninterrupted = {first_id: json.loads((exp / first_id / "train" / "metrics.json").read_text())["metrics"],
                     second_id: straight.metrics}
    for tid, metrics in uninterrupted.items():
        got = df[df["trial_id"] == tid].set_index(["metric", "nfe"])["value"].to_dict()
        want = {(k.split("/")[0], int(k.split("_")[-1])): v for k, v in metrics.items() if "/nfe_" in k}
        assert want and set(got) == set(want) and got == pytest.approx(want, rel=1e-9, abs=0), tid

    # every step of both trials logged exactly once
    expected = list(range(100, 3001, 100))
    assert logged[first_id] == expected
    assert logged[second_id] == sorted(set(logged[second_id])), "no step logged twice"
    assert logged[second_id] == expected, "no step lost: the killed driver's unsent metrics are logged by the rerun"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_tracking_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 120
        while True:
            try:
                MlflowClient(uri).search_experiments()
                break
            except Exception:
                if time.time() > end or server.poll() is not None:
                    raise
                time.sleep(1)
        study = _write(tmp_path, "remote", {"base": TOY, "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5]},
                                            "seeds": [0], "eval": {"nfe": [1], "num_samples": 100}})
        env = {**_env(tmp_path), "MLFLOW_TRACKING_URI": uri}  # honoured like --tracking-uri
        proc = subprocess.run(_cmd(study), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client, parents, children, n = _runs(uri, "remote")
        assert len(parents) == 1 and len(children) == 2 and n == 3
        for run in children.values():
            assert run.info.status == "FINISHED" and "final/swd/nfe_1" in run.data.metrics
            paths = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
            assert "samples/nfe_1.png" in paths
        assert not (tmp_path / "mlflow.db").exists(), "nothing written to the default local store"
        assert any((tmp_path / "art").rglob("nfe_1.npy")), "artifacts went through the server"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_optuna_search_with_asha(tmp_path):
    study = _write(tmp_path, "search", {
        "base": {**TOY, "train": {**TOY["train"], "steps": 200}},
        "axes": {"train.lr": {"loguniform": [1e-4, 1e-2]},
                 "meanflow.time_sampler": {"choice": [{"name": "uniform"}, {"name": "logit_normal", "mu": -0.4}]}},
        "seeds": [0, 1], "search": {"algorithm": "optuna", "num_samples": 4, "metric": "swd/nfe_1"},
        "scheduler": {"name": "asha", "grace_period": 50},
        "eval": {"nfe": [1], "num_samples": 100, "every_steps": 50, "num_samples_during": 100}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(_cmd(study, "--tracking-uri", uri), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, parents, children, n = _runs(uri, "search")
    assert len(parents) == 1 and n == 5 and parents[0].data.tags["mfsweep.search"] == "optuna"
    assert sorted(t[:4] for t in children) == ["t000", "t001", "t002", "t003"]
    for tid, run in children.items():
        assert run.data.tags["mfsweep.status"] in ("finished", "stopped")
        assert 1e-4 <= float(run.data.params["train.lr"]) <= 1e-2
        assert run.data.tags["axis.meanflow.time_sampler.name"] in tid, "tags, params and id agree"
        assert run.data.params["seed"] == run.data.tags["axis.seed"] == tid[-1]
        assert client.get_metric_history(run.info.run_id, "eval/swd/nfe_1"), "ASHA's metric was reported"
