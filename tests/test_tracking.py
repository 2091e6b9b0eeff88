"""MLflow side without Ray: parent / child runs follow docs/architecture.md, resume reuses runs (no
duplicates, replayed steps skipped), failures and divergence are recorded, and analysis/ can read
what was written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.study import parse_study
from mfsweep.sweep.tracking import StudyTracker

STUDY = {"name": "trk", "paper_table": "1a", "description": "tracking test",
         "base": {"data": {"name": "moons"}, "model": {"hidden_dim": 16, "depth": 1}, "train": {"steps": 100}},
         "axes": {"meanflow.frac_r_neq_t": [0.0, 0.5], "meanflow.time_sampler": [{"name": "uniform"},
                                                                                 {"name": "logit_normal"}]},
         "seeds": [0], "eval": {"nfe": [1, 2], "num_samples": 64}}


@pytest.fixture()
def setup(tmp_path):
    plan = make_plan(parse_study(STUDY))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return plan, uri, tmp_path


def _outputs(tmp_path, spec):
    out = tmp_path / "out" / spec.trial_id
    (out / "samples").mkdir(parents=True)
    (out / "config.yaml").write_text(f"name: {spec.trial_id}\n")
    meta = {"swd": {"extractor": "identity/projections=256", "resize": "none", "num_samples": 64}}
    (out / "metrics.json").write_text(json.dumps({"status": "finished", "metric_metadata": meta}))
    np.save(out / "samples" / "nfe_1.npy", np.zeros((4, 2), np.float32))
    (out / "samples" / "nfe_1.png").write_bytes(b"\x89PNG fake")
    return out


def _final(step=100):
    return {"step": step, "phase": "final", "status": "finished", "time/train_s": 1.5,
            "final/swd/nfe_1": 0.2, "final/swd/nfe_2": 0.1, "final/num_samples": 64.0}


def test_parent_and_children_follow_the_schema(setup):
    plan, uri, tmp = setup
    tracker = StudyTracker(uri, plan)
    parent, reused = tracker.open_parent("exec-1", "name: trk\n", None)
    assert not reused
    spec = plan.trials[1]
    tracker.trial_started(spec)
    for step in (20, 40):
        tracker.trial_result(spec, {"step": step, "phase": "train", "train/loss": 1.0 / step, "train/mse": 2.0})
    tracker.trial_result(spec, {"step": 40, "phase": "eval", "eval/swd/nfe_1": 0.5, "eval/num_samples": 32.0,
                                "swd/nfe_1": 0.5})
    tracker.trial_complete(spec, _final(), _outputs(tmp, spec), "finished")

    client = MlflowClient(uri)
    p = client.get_run(parent)
    assert p.info.run_name == "trk"
    tags = p.data.tags
    assert tags["mfsweep.role"] == "study" and tags["mfsweep.study"] == "trk" and tags["mfsweep.paper_table"] == "1a"
    assert json.loads(tags["mfsweep.axes"]) == ["meanflow.frac_r_neq_t", "meanflow.time_sampler.name", "seed"]
    assert {"mfsweep.version", "mfsweep.git_commit", "mfsweep.description"} <= set(tags)
    assert {a.path for a in client.list_artifacts(parent)} == {"study.yaml", "trials.csv", "base_config.yaml"}

    [child] = tracker.children()
    ct, rid = child.data.tags, child.info.run_id
    assert child.info.run_name == spec.trial_id == "t001-frac_r_neq_t=0.0-time_sampler=logit_normal-seed=0"
    assert ct["mlflow.parentRunId"] == parent and ct["mfsweep.role"] == "trial" and ct["mfsweep.status"] == "finished"
    assert ct["axis.meanflow.frac_r_neq_t"] == "0.0" and ct["axis.meanflow.time_sampler.name"] == "logit_normal"
    assert ct["axis.seed"] == "0" and ct["metric.swd.extractor"] == "identity/projections=256" and ct["metric.swd.num_samples"] == "64"
    assert child.data.params["meanflow.frac_r_neq_t"] == "0.0" and child.data.params["train.steps"] == "100"
    assert [m.step for m in client.get_metric_history(rid, "train/loss")] == [20, 40]
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "eval/swd/nfe_1")] == [(40, 0.5)]
    assert child.data.metrics["final/swd/nfe_1"] == 0.2 and child.data.metrics["time/train_s"] == 1.5
    assert child.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(rid)} | {a.path for a in client.list_artifacts(rid, "samples")}
    assert {"config.yaml", "metrics.json", "samples/nfe_1.npy", "samples/nfe_1.png"} <= arts


def test_resume_reuses_runs_and_skips_replayed_steps(setup):
    plan, uri, tmp = setup
    first = StudyTracker(uri, plan)
    parent, _ = first.open_parent("exec-1", "name: trk\n", None)
    spec = plan.trials[0]
    first.trial_started(spec)
    for step in (20, 40, 60):
        first.trial_result(spec, {"step": step, "train/loss": 1.0})
    first.mark_unfinished_stopped()  # the driver was interrupted
    stopped = first.children()[0]
    assert stopped.data.tags["mfsweep.status"] == "stopped" and stopped.info.status == "KILLED"

    second = StudyTracker(uri, plan)  # a new process resumes the same execution
    again, reused = second.open_parent("exec-1", "name: trk\n", None)
    assert reused and again == parent
    second.trial_started(spec)
    for step in (40, 60, 80, 100):  # resumed from the checkpoint at step 20: 40 and 60 are replays
        second.trial_result(spec, {"step": step, "train/loss": 2.0})
    second.trial_complete(spec, _final(), None, "finished")
    second.trial_complete(spec, _final(), None, "finished")  # a second completion logs nothing more
    client = MlflowClient(uri)
    [child] = second.children()
    history = client.get_metric_history(child.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(20, 1.0), (40, 1.0), (60, 1.0), (80, 2.0), (100, 2.0)]
    assert len(client.get_metric_history(child.info.run_id, "final/swd/nfe_1")) == 1
    assert child.data.tags["mfsweep.status"] == "finished"
    runs = client.search_runs([second.experiment_id])
    assert len(runs) == 2, "one parent and one child, nothing duplicated"
    third = StudyTracker(uri, plan)
    new_parent, reused = third.open_parent("exec-2", "name: trk\n", None)  # --restart: a new execution
    assert not reused and new_parent != parent


def test_failed_and_diverged_trials(setup):
    plan, uri, tmp = setup
    tracker = StudyTracker(uri, plan)
    tracker.open_parent("exec-1", "name: trk\n", None)
    bad, div = plan.trials[2], plan.trials[3]
    tracker.trial_started(bad)
    tracker.trial_failed(bad, "DataError: data.path: cannot read", "Traceback ...\nDataError: data.path: cannot read")
    tracker.trial_started(div)
    result = {"step": 7, "phase": "final", "status": "diverged", "error": "diverged at step 7: loss is nan",
              "time/train_s": 0.3}
    tracker.trial_complete(div, result, None, "diverged", result["error"])
    client = MlflowClient(uri)
    runs = {r.data.tags["mfsweep.trial_id"]: r for r in tracker.children()}
    f, d = runs[bad.trial_id], runs[div.trial_id]
    assert f.info.status == "FAILED" and f.data.tags["mfsweep.status"] == "failed"
    assert f.data.tags["mfsweep.error"].startswith("DataError")
    assert [a.path for a in client.list_artifacts(f.info.run_id)] == ["error.txt"]
    assert d.info.status == "FAILED" and d.data.tags["mfsweep.status"] == "diverged"
    assert "loss is nan" in d.data.tags["mfsweep.error"]


def test_error_summary_picks_the_exception_line():
    from mfsweep.sweep.events import error_summary  # needs Ray: a hard dependency, an ImportError fails

    trace = ("Failure # 1 (occurred at 2025-01-01)\nray::ImplicitFunc.train() (pid=1)\n"
             "  File \"x.py\", line 3, in f\n    raise DataError('x')\n"
             "mfsweep.data.DataError: data.path: cannot read /x.npy\n\n")
    assert error_summary(trace) == "mfsweep.data.DataError: data.path: cannot read /x.npy"
    assert error_summary("") == "unknown error"


def test_analysis_reads_what_tracking_writes(setup):
    from analysis import load  # ships with mfsweep: an ImportError fails the test
    plan, uri, tmp = setup
    tracker = StudyTracker(uri, plan)
    tracker.open_parent("exec-1", "name: trk\n", None)
    for spec in plan.trials:
        tracker.trial_started(spec)
        tracker.trial_complete(spec, _final(), None, "finished")
    study = load.load_study("trk", uri)
    assert study.axes == ["meanflow.frac_r_neq_t", "meanflow.time_sampler.name", "seed"]
    df = load.tidy(study, phases=("final",))
    assert len(df) == 4 * 2 and set(df["meanflow.time_sampler.name"]) == {"uniform", "logit_normal"}
    assert set(df["status"]) == {"finished"} and set(df["nfe"]) == {1, 2}
