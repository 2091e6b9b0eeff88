"""A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head without CPUs and
two worker nodes with one CPU each, a shared storage path, a SQLite MLflow store. ``mfsweep run
--address <head>`` runs as a separate driver process, as it would on a real cluster.

- the trials of a study are spread over both worker nodes (node ids from Ray's actor table, matched
  to the ``pid`` Tune records per trial), all finish, one MLflow parent and one child per trial;
- the node-local storage check: a plain storage path without ``shared: true`` on this multi-node
  cluster stops the driver with exit code 2 before anything is written;
- a worker node removed mid-trial: with ``max_failures: 2`` the trial is retried on the surviving
  node from its last checkpoint, finishes, its single MLflow child run has continuous steps, and
  the driver prints one line about the lost node instead of Ray's traceback;
- a two-worker data-parallel trial (gloo, 1 CPU per worker) runs as one group on the node that fits
  its placement group, and its child run records the world size and one set of metrics.

The cluster starts once for the module (about 5 s); the node-removal test runs last and adds a
replacement node afterwards. The console line of a retried trial is also checked without Ray, on
the error texts Ray writes for a node that died, an unreachable actor and an ordinary exception.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

TOY = {"data": {"name": "moons", "num_train": 2000, "num_test": 500},
       "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
       "train": {"steps": 150, "batch_size": 64, "checkpoint_every": 50, "log_every": 25, "warmup_steps": 10},
       "eval": {"nfe": [1], "num_samples": 200}}


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs) + two 1-CPU worker nodes; this process is connected to read Ray's actor table."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _study(tmp_path: Path, name: str, shared: bool = True, **raw) -> Path:
    path = tmp_path / f"{name}.yaml"
    storage = {"path": str(tmp_path / "shared"), "shared": True} if shared else str(tmp_path / "shared")
    path.write_text(yaml.safe_dump({"name": name, "storage": storage, "base": TOY, **raw}, sort_keys=False))
    return path


def _driver(study: Path, address: str, uri: str) -> list[str]:
    return [sys.executable, "-m", "mfsweep.cli", "run", str(study), "--address", address, "--tracking-uri", uri]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _children(uri: str, study: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    parents = [r for r in runs if r.data.tags.get("mfsweep.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
    return client, parents, children


def _actors() -> list[dict]:
    """Every actor the cluster has had (alive or dead) with its pid and node id, from the GCS
    (the dashboard's state API needs ray[default], which mfsweep does not install)."""
    from ray._private import state

    return [{"pid": a.get("Pid"), "node_id": a["Address"]["NodeID"], "state": a.get("State"),
             "class": a.get("ActorClassName", "")} for a in state.actors().values()]


def _trial_pids(exp_dirs: list[Path]) -> dict[str, set[int]]:
    """Trial id → the pids of the processes that reported its results (Tune's result.json)."""
    out: dict[str, set[int]] = {}
    for exp in exp_dirs:
        for res in exp.glob("t*/result.json"):
            pids = {json.loads(line)["pid"] for line in res.read_text().splitlines() if line.strip()}
            out.setdefault(res.parent.name, set()).update(pids)
    return out


@pytest.mark.slow
def test_trials_spread_over_both_worker_nodes(cluster, tmp_path):
    study = _study(tmp_path, "spread", axes={"meanflow.frac_r_neq_t": [0.0, 0.5]}, seeds=[0, 1])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(_driver(study, cluster.address, uri), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trials 4/4 · 4 finished" in proc.stdout

    pids = _trial_pids(list((tmp_path / "shared" / "spread").glob("*-*")))
    assert len(pids) == 4 and all(pids.values()), pids
    node_of_pid = {a["pid"]: a["node_id"] for a in _actors()}
    workers = {n.node_id for n in cluster.workers}
    nodes = {tid: {node_of_pid[p] for p in ps} for tid, ps in pids.items()}
    used = set().union(*nodes.values())
    assert used == workers, f"trials ran on {nodes}; worker nodes {workers}"
    assert cluster.head_node.node_id not in used  # the head has no CPUs

    client, parents, children = _children(uri, "spread")
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mfsweep.trial_id"][:4] for c in children} == {"t000", "t001", "t002", "t003"}
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert [m.step for m in client.get_metric_history(c.info.run_id, "train/loss")] == [25, 50, 75, 100, 125, 150]


@pytest.mark.slow
def test_node_local_storage_is_refused_on_the_cluster(cluster, tmp_path):
    study = _study(tmp_path, "local", shared=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(_driver(study, cluster.address, uri), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "storage.path" in proc.stderr and "3 nodes" in proc.stderr and "shared: true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    written = [f for f in (tmp_path / "shared").rglob("*") if f.is_file() and f.name != ".lock"]
    assert written == [], written  # no execution.json, no experiment folder (the study's lock file aside)


@pytest.mark.slow
def test_two_worker_trial_runs_as_one_group_on_a_node_that_fits_it(cluster, tmp_path):
    """``resources: {workers: 2, cpu: 1}`` (gloo, the stand-in for 2 GPUs): the trial's one placement
    group bundle (2 CPUs) fits only a 2-CPU node added for this test, not the 1-CPU workers; the
    group trains, rank 0 reports one set of metrics, and the child run records the world size."""
    big = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        study = _study(tmp_path, "dp2", axes={"meanflow.frac_r_neq_t": [0.5]}, seeds=[0],
                       resources={"workers": 2, "cpu": 1})
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        proc = subprocess.run(_driver(study, cluster.address, uri), cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        pids = _trial_pids(list((tmp_path / "shared" / "dp2").glob("*-*")))
        assert len(pids) == 1, pids
        node_of_pid = {a["pid"]: a["node_id"] for a in _actors()}
        assert {node_of_pid[p] for p in next(iter(pids.values()))} == {big.node_id}
    finally:
        cluster.remove_node(big, allow_graceful=True)
    client, parents, children = _children(uri, "dp2")
    assert len(parents) == 1 and len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
    assert run.data.params["resources.workers"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [25, 50, 75, 100, 125, 150]  # one rank reports: no step twice
    assert len(client.get_metric_history(run.info.run_id, "final/swd/nfe_1")) == 1
    (written,) = [json.loads(f.read_text()) for f in (tmp_path / "shared" / "dp2").glob("*/t000*/train/metrics.json")]
    assert written["world_size"] == 2 and len({tuple(s) for s in written["rank_seeds"]}) == 2


@pytest.mark.slow
def test_removed_worker_node_retries_the_trial_on_the_other(cluster, tmp_path):
    train = {**TOY["train"], "steps": 2000, "checkpoint_every": 100, "log_every": 50}
    study = _study(tmp_path, "lost", base={**TOY, "train": train}, max_failures=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "driver.log"
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(_driver(study, cluster.address, uri), cwd=tmp_path, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    by_id = {n.node_id: n for n in cluster.workers}
    removed = None
    try:
        while removed is None:  # the trial's node, once the trial has a checkpoint on shared storage
            assert proc.poll() is None, log.read_text()
            assert time.time() - t0 < 300, "the trial never wrote a checkpoint"
            if any((tmp_path / "shared" / "lost").glob("*/t000*/checkpoint_*")):
                alive = [a for a in _actors() if a["state"] == "ALIVE" and a["node_id"] in by_id]
                if len(alive) == 1:
                    removed = by_id[alive[0]["node_id"]]
                    cluster.remove_node(removed, allow_graceful=True)
            time.sleep(0.2)
        assert proc.wait(timeout=400) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if removed is not None:  # keep the module's cluster at two workers
            cluster.workers = [n for n in cluster.workers if n is not removed] + [cluster.add_node(num_cpus=1)]
            cluster.wait_for_nodes()
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if "lost its node" in ln]
    assert len(lines) == 1, text
    m = re.search(r"trial (t000\S*) lost its node; retry 1 of 2 from step (\d+)", lines[0])
    assert m and int(m.group(2)) >= 100 and int(m.group(2)) % 100 == 0, lines[0]
    assert "Traceback" not in text and "ActorDiedError" not in text, text

    client, parents, children = _children(uri, "lost")
    assert len(parents) == 1 and len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
    assert int(run.data.tags["mfsweep.resumed_from"]) >= int(m.group(2))
    retry_log = client.download_artifacts(run.info.run_id, "retry-1.txt", str(tmp_path))
    assert "its node has died" in Path(retry_log).read_text()  # Ray's error text, kept in the run
    steps = [h.step for h in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(50, 2001, 50)), steps  # no gap, no duplicate
    # the retry ran on the surviving worker node, the full trace is in the trial's error file
    (result,) = (tmp_path / "shared" / "lost").glob(f"*/{m.group(1)}/result.json")
    last = json.loads(result.read_text().splitlines()[-1])
    assert last["step"] == 2000
    node_of_pid = {a["pid"]: a["node_id"] for a in _actors()}
    assert node_of_pid[last["pid"]] == (set(by_id) - {removed.node_id}).pop()  # the surviving worker node
    errors = list((tmp_path / "shared" / "lost").glob("*/t000*/error.txt"))
    assert errors and "Failure # 1" in errors[0].read_text()


# ---- the retry line, without Ray -------------------------------------------------------------------
NODE_DIED = """Failure # 1 (occurred at 2026-11-28_12-49-31)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tactor_id: 828f2ed13f91c1698027441e04000000
\tpid: 11069
The actor died because its node has died. Node Id: 73c01674c7bb99f195933497ca656b85c7eceda3d9e2ba759001035a
\tthe actor's node was terminated expectedly: received SIGTERM
"""
UNREACHABLE = ("The actor eae4b34786c4a7e6b7fd3f0402000000 is unavailable: The actor is temporarily unavailable: "
               "RpcError: RPC error: Socket closed rpc_code: 14. The task may or may not have been executed on the actor.")
USER_ERROR = """ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)
Traceback (most recent call last):
  File "train.py", line 10, in step
RuntimeError: CUDA out of memory
"""


class _Trial:
    def __init__(self, tmp_path: Path, text: str, failures: int, config: dict):
        self.error_file = str(tmp_path / "error.txt")
        Path(self.error_file).write_text(text)
        self.run_metadata = type("Meta", (), {"num_failures": failures})()
        self.config = config

    def __str__(self) -> str:
        return self.config["trial_id"]


class _Tracker:
    def trial_result(self, spec, result):
        pass


@pytest.mark.parametrize(("trace", "failures", "checkpoint", "said"), [
    (NODE_DIED, 1, 200, "lost its node; retry 1 of 2 from step 200"),
    ("Failure # 1 (occurred at ...)\n" + UNREACHABLE + "\n" + NODE_DIED.replace("Failure # 1", "Failure # 2"), 2, 400,
     "lost its node; retry 2 of 2 from step 400"),
    (UNREACHABLE, 1, None, "lost contact with its node or worker; retry 1 of 2 from its last checkpoint"),
    (NODE_DIED + "Failure # 2 (occurred at ...)\n" + USER_ERROR, 2, 100,  # only the last failure counts
     "failed (RuntimeError: CUDA out of memory); retry 2 of 2 from step 100"),
])
def test_retry_is_one_console_line(tmp_path, trace, failures, checkpoint, said):
    from io import StringIO

    from rich.console import Console

    from mfsweep.sweep.events import StudyEvents
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import load_study

    study, _ = load_study(_study(tmp_path, "retry", max_failures=2))
    plan = make_plan(study)
    buf = StringIO()
    events = StudyEvents(plan, _Tracker(), Console(file=buf, width=300))
    trial = _Trial(tmp_path, trace, failures, {"trial_id": plan.trials[0].trial_id})
    if checkpoint:
        events.on_trial_result(trial, {"phase": "checkpoint", "step": checkpoint})
    events.on_trial_recover(trial)
    lines = buf.getvalue().splitlines()
    assert lines == [f"retry    trial {plan.trials[0].trial_id} {said}"]


def test_tune_controller_traceback_is_filtered_only_while_a_study_runs():
    import logging

    from mfsweep.sweep import events

    log = logging.getLogger("ray.tune.execution.tune_controller")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "Trial task failed for trial %s", ("t000",), None)
    other = log.makeRecord(log.name, logging.ERROR, __file__, 1, "Something else", (), None)
    events.attach(object())
    try:
        assert not log.filter(record) and log.filter(other)
    finally:
        events.detach()
    assert log.filter(record)
