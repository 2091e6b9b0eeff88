"""Unit tests of the Ray Tune adapter (mfsweep/sweep/tune.py), the search algorithms
(mfsweep/sweep/searchers.py) and the runner's pure helpers (mfsweep/sweep/runner.py), without
starting Ray: ``ray.tune.report``, ``ray.cluster_resources`` and the Tuner are replaced where needed."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest
import ray
from ray import tune as ray_tune
from ray.tune.search import sample

from mfsweep.config import ConfigError
from mfsweep.sweep import runner
from mfsweep.sweep import tune as mtune
from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.searchers import EvalOptunaSearch
from mfsweep.sweep.study import parse_study
from mfsweep.training.train import TrainResult

BASE = {"data": {"name": "moons", "num_train": 64, "num_test": 32}, "model": {"hidden_dim": 8, "depth": 1},
        "train": {"steps": 40, "batch_size": 16}}


def plan_of(**study):
    raw = {"name": "units", "base": BASE, "eval": {"nfe": [1, 2], "num_samples": 16}, **study}
    return make_plan(parse_study(raw))


@pytest.fixture(scope="module")
def grid():
    return plan_of(axes={"meanflow.frac_r_neq_t": [0.0, 0.5],
                         "meanflow.time_sampler": {"uni": {"name": "uniform"}, "ln": {"name": "logit_normal"}}},
                   seeds=[0, 1])


@pytest.fixture(scope="module")
def optuna_plan():
    return plan_of(axes={"train.lr": {"loguniform": [1e-4, 1e-2]}, "meanflow.frac_r_neq_t": {"uniform": [0.0, 0.75]},
                         "model.depth": {"int": [1, 3]},
                         "meanflow.time_sampler": {"choice": [{"name": "uniform"}, {"name": "logit_normal"}]}},
                   seeds=[3, 4], search={"algorithm": "optuna", "num_samples": 5, "seed": 11, "sampler": "tpe"})


# ---- tune.py ----------------------------------------------------------------------------------------
def test_trial_of_and_trial_namer_give_the_planned_ids(grid, optuna_plan):
    assert len(grid.trials) == 8 and len({t.trial_id for t in grid.trials}) == 8
    namer = mtune.TrialNamer(grid)
    for spec in grid.trials:
        assert mtune.trial_of(grid, {"trial_id": spec.trial_id}, "whatever") is spec
        assert namer(types.SimpleNamespace(config={"trial_id": spec.trial_id}, experiment_tag="9_x")) == spec.trial_id
    with pytest.raises(KeyError):
        mtune.trial_of(grid, {"trial_id": "t999-nope-seed=0"}, "t999")

    # optuna: Tune's 1-based experiment tag → the plan's 0-based trial number; seeds cycle
    axes = {"train.lr": 0.001234567, "meanflow.frac_r_neq_t": 0.5, "model.depth": 2,
            "meanflow.time_sampler": "name=logit_normal"}  # a mapping choice is offered as its tag text
    trial = types.SimpleNamespace(config={"axes": axes}, experiment_tag="3_lr=0.0012")
    name = mtune.TrialNamer(optuna_plan)(trial)
    spec = mtune.trial_of(optuna_plan, {"axes": axes}, name)
    assert name == spec.trial_id and name.startswith("t002-") and name.endswith("-seed=3")
    assert spec.index == 2 and spec.seed == 3 and spec.config.seed == 3
    assert spec.config.train.lr == pytest.approx(0.001234567)
    assert spec.config.model.depth == 2 and spec.config.meanflow.time_sampler.name == "logit_normal"
    assert mtune.trial_of(optuna_plan, {"axes": axes}, "t003-x").seed == 4  # number 3 → second seed


def test_out_dir_local_and_uri(tmp_path):
    assert mtune.out_dir(str(tmp_path / "exp"), "t000-a-seed=0") == tmp_path / "exp" / "t000-a-seed=0" / "train"
    scratch = mtune.out_dir("s3://bucket/prefix/exp", "t001-b-seed=0")
    assert scratch == Path(mtune.tempfile.gettempdir()) / "mfsweep" / "s3" / "bucket" / "prefix" / "exp" / \
        "t001-b-seed=0" / "train"


@pytest.fixture
def reports(monkeypatch):
    """ray.tune.report replaced: records (result, files in the checkpoint folder with their bytes)."""
    seen = []

    def report(result, checkpoint=None):
        files = None
        if checkpoint is not None:
            root = Path(checkpoint.path)
            files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        seen.append((dict(result), files))
    monkeypatch.setattr(ray_tune, "report", report)
    return seen


def test_tune_reporter_reports_progress_checkpoints_and_outputs(grid, tmp_path, reports):
    spec = grid.trials[0]
    out = tmp_path / "exp" / spec.trial_id / "train"
    out.mkdir(parents=True)
    rep = mtune.TuneReporter(spec, out, "swd/nfe_1", start_step=20)
    rep.on_log(5, {"train/loss": 0.5})
    assert reports[-1] == ({"step": 5, "mfsweep_trial": spec.trial_id, "out_dir": str(out), "resumed_from": 20,
                            "phase": "train", "train/loss": 0.5}, None)

    rep.on_eval(10, {"swd/nfe_1": 0.25, "swd/nfe_2": 0.125, "num_samples": 16.0, "junk": 1.0}, 16, "eval")
    result, files = reports[-1]
    assert files is None and result["phase"] == "eval" and result["step"] == 10
    assert result["eval/swd/nfe_1"] == 0.25 and result["eval/swd/nfe_2"] == 0.125 and result["eval/num_samples"] == 16.0
    assert result["swd/nfe_1"] == 0.25, "the searcher's metric rides along with the evaluation"
    assert "eval/junk" not in result and "eval/num_samples/nfe" not in result

    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(b"step-20-weights")
    rep.on_checkpoint(20, ckpt)
    result, files = reports[-1]
    assert result["phase"] == "checkpoint" and files == {"checkpoint.pt": b"step-20-weights"}
    assert [p.name for p in out.parent.iterdir()] == ["train"], "the staging folder is removed after the report"

    n = len(reports)
    rep.on_eval(40, {"swd/nfe_1": 0.2, "swd/nfe_2": 0.1}, 16, "final")
    assert len(reports) == n, "final values wait for finish()"
    (out / "config.yaml").write_text("name: x\n")
    (out / "metrics.json").write_text("{}")
    (out / "samples").mkdir()
    (out / "samples" / "nfe_1.npy").write_bytes(b"npy")
    rep.finish(TrainResult("finished", 40, train_time_s=1.5, eval_time_s=0.5, checkpoint_time_s=0.25))
    result, files = reports[-1]
    assert result["phase"] == "final" and result["status"] == "finished" and result["step"] == 40
    assert result["final/swd/nfe_1"] == 0.2 and result["final/num_samples"] == 16.0 and result["swd/nfe_1"] == 0.2
    assert (result["time/train_s"], result["time/eval_s"], result["time/checkpoint_s"]) == (1.5, 0.5, 0.25)
    assert result["error"] == ""
    assert files == {"checkpoint.pt": b"step-20-weights", "config.yaml": b"name: x\n", "metrics.json": b"{}",
                     "samples/nfe_1.npy": b"npy"}


def test_tune_reporter_fresh_start_and_diverged(grid, tmp_path, reports):
    spec = grid.trials[1]
    rep = mtune.TuneReporter(spec, tmp_path, None)
    rep.on_log(1, {"train/loss": 1.0})
    assert "resumed_from" not in reports[-1][0]
    rep.finish(TrainResult("diverged", 7, error="diverged at step 8: loss is nan"))
    result, files = reports[-1]
    assert result["status"] == "diverged" and result["error"].startswith("diverged at step 8")
    assert not any(k.startswith("final/") for k in result) and files is None


def test_finished_before(grid, tmp_path):
    spec = grid.trials[0]
    steps = spec.config.train.steps
    assert mtune._finished_before(tmp_path, spec) is None  # nothing there
    (tmp_path / "metrics.json").write_text("{not json")
    assert mtune._finished_before(tmp_path, spec) is None
    stored = {"status": "finished", "step": steps, "metrics": {"swd/nfe_1": 0.3}}
    (tmp_path / "metrics.json").write_text(json.dumps(stored))
    assert mtune._finished_before(tmp_path, spec) is None, "no config.yaml: not a complete output"
    (tmp_path / "config.yaml").write_text("name: x\n")
    got = mtune._finished_before(tmp_path, spec)
    assert got is not None and got.step == steps and got.metrics == {"swd/nfe_1": 0.3}
    (tmp_path / "metrics.json").write_text(json.dumps({**stored, "step": steps - 1}))
    assert mtune._finished_before(tmp_path, spec) is None, "fewer steps than planned: train on"
    (tmp_path / "metrics.json").write_text(json.dumps({**stored, "status": "diverged"}))
    assert mtune._finished_before(tmp_path, spec) is None
    (tmp_path / "metrics.json").write_text(json.dumps({**stored, "unknown_field": 1}))
    assert mtune._finished_before(tmp_path, spec) is None, "a foreign metrics.json is not trusted"


def test_param_space(grid, optuna_plan):
    space = mtune.param_space(grid)
    assert space == {"trial_id": {"grid_search": [t.trial_id for t in grid.trials]}}
    axes = mtune.param_space(optuna_plan)["axes"]
    assert set(axes) == {a.key for a in optuna_plan.axes}
    lr, frac, depth, sampler = (axes[k] for k in ("train.lr", "meanflow.frac_r_neq_t", "model.depth",
                                                  "meanflow.time_sampler"))
    assert isinstance(lr.get_sampler(), sample.Float._LogUniform) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(frac.get_sampler(), sample.Float._Uniform) and (frac.lower, frac.upper) == (0.0, 0.75)
    assert isinstance(depth, sample.Integer) and (depth.lower, depth.upper) == (1, 4), "int bounds inclusive"
    assert isinstance(sampler, sample.Categorical)
    assert sampler.categories == ["name=uniform", "name=logit_normal"]


def _suggestions(plan, n=3):
    algo = mtune.search_algorithm(plan)
    assert algo.set_search_properties(None, None, mtune.param_space(plan))
    return [algo.suggest(f"trial_{i}")["axes"] for i in range(n)]


def test_search_algorithms(grid, optuna_plan):
    assert mtune.search_algorithm(grid) is None
    rnd = plan_of(axes={"train.lr": {"loguniform": [1e-4, 1e-2]}}, search={"algorithm": "random", "num_samples": 3})
    assert mtune.search_algorithm(rnd) is None and len(rnd.trials) == 3
    again = plan_of(axes={"train.lr": {"loguniform": [1e-4, 1e-2]}}, search={"algorithm": "random", "num_samples": 3})
    assert [t.choices for t in rnd.trials] == [t.choices for t in again.trials], "random points from search.seed"
    other = plan_of(axes={"train.lr": {"loguniform": [1e-4, 1e-2]}},
                    search={"algorithm": "random", "num_samples": 3, "seed": 1})
    assert [t.choices for t in rnd.trials] != [t.choices for t in other.trials]

    import optuna

    algo = mtune.search_algorithm(optuna_plan)
    assert isinstance(algo, EvalOptunaSearch) and isinstance(algo._sampler, optuna.samplers.TPESampler)
    assert algo.metric == optuna_plan.metric == "swd/nfe_1" and algo.mode == "min"
    first = _suggestions(optuna_plan)
    assert first == _suggestions(optuna_plan), "search.seed reaches the sampler"
    for point in first:
        assert 1e-4 <= point["train.lr"] <= 1e-2 and 0.0 <= point["meanflow.frac_r_neq_t"] <= 0.75
        assert point["model.depth"] in (1, 2, 3) and point["meanflow.time_sampler"] in ("name=uniform",
                                                                                         "name=logit_normal")
    reseeded = plan_of(axes=optuna_plan.study.axes, seeds=[3, 4],
                       search={"algorithm": "optuna", "num_samples": 5, "seed": 12})
    assert _suggestions(reseeded) != first
    rs = plan_of(axes=optuna_plan.study.axes, search={"algorithm": "optuna", "sampler": "random", "seed": 11})
    assert isinstance(mtune.search_algorithm(rs)._sampler, optuna.samplers.RandomSampler)


def test_eval_optuna_search_passes_on_only_reports_with_the_metric(optuna_plan, monkeypatch):
    from ray.tune.search.optuna import OptunaSearch

    seen = []
    monkeypatch.setattr(OptunaSearch, "on_trial_result", lambda self, tid, result: seen.append((tid, result)))
    algo = mtune.search_algorithm(optuna_plan)
    algo.on_trial_result("a", {"step": 5, "train/loss": 1.0})
    algo.on_trial_result("a", {"step": 10, "swd/nfe_1": 0.3})
    assert seen == [("a", {"step": 10, "swd/nfe_1": 0.3})]


def test_scheduler(grid):
    assert mtune.scheduler(grid) is None
    plan = plan_of(axes={"meanflow.frac_r_neq_t": [0.0, 0.5]}, scheduler={"name": "asha", "grace_period": 10},
                   search={"mode": "min"}, eval={"nfe": [1], "num_samples": 16, "every_steps": 10})
    asha = mtune.scheduler(plan)
    assert asha._metric == "swd/nfe_1" and asha._mode == "min" and asha._time_attr == "step"
    assert asha._max_t == 40 and asha._reduction_factor == 2.0
    assert [r for r, _ in asha._brackets[0]._rungs] == [40, 20, 10], "rungs from grace_period 10 to max_t 40"


# ---- runner.py --------------------------------------------------------------------------------------
def test_storage_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.storage_root("runs/ray") == str(tmp_path.resolve() / "runs" / "ray")
    assert runner.storage_root("s3://bucket/prefix") == "s3://bucket/prefix"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runner.storage_root("~/ray") == str(tmp_path / "home" / "ray")
    assert Path(runner.storage_root("./a/../b")).is_absolute() and ".." not in runner.storage_root("./a/../b")


def test_execution_state_round_trip(tmp_path):
    study_dir = str(tmp_path / "storage" / "mystudy")
    assert runner.read_execution(study_dir) is None
    state = {"execution_id": "20260101-000000-abcdef", "fingerprint": "f" * 16, "study": "mystudy",
             "parent_run_id": "r1", "tracking_uri": "sqlite:///x.db", "created": "2026-01-01T00:00:00"}
    runner.write_execution(study_dir, state)
    assert json.loads((Path(study_dir) / "execution.json").read_text()) == state
    assert runner.read_execution(study_dir) == state
    runner.write_execution(study_dir, {**state, "execution_id": "second"})
    assert runner.read_execution(study_dir)["execution_id"] == "second"


def _errors(**kw) -> list[tuple[str, str]]:
    args = {"storage": "/data/ray", "shared": False, "address": None, "tracking_uri": "sqlite:///m.db", "nodes": 1, **kw}
    try:
        runner.check_storage(**args)
    except ConfigError as exc:
        return exc.errors
    return []


def test_check_storage():
    assert _errors() == []  # one node, local path, local store
    assert _errors(storage="s3://b/p", nodes=4) == []
    assert _errors(nodes=4, shared=True) == []
    [(path, msg)] = _errors(nodes=3)
    assert path == "storage.path" and "3 nodes" in msg and "storage.shared" in msg
    client = _errors(address="ray://head:10001")
    assert [p for p, _ in client] == ["storage.path", "tracking.uri"]
    assert "Ray Client" in client[0][1] and "sqlite:///m.db" in client[1][1]
    assert _errors(address="ray://head:10001", storage="gs://b/p", tracking_uri="http://mlflow:5000") == []
    assert [p for p, _ in _errors(address="ray://h:1", shared=True, tracking_uri="https://m")] == []
    assert [p for p, _ in _errors(address="ray://h:1", storage="s3://b", tracking_uri="file:///tmp/x")] == ["tracking.uri"]


def test_slots(grid, optuna_plan, monkeypatch):
    resources = {}
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))
    resources.update(CPU=4.0)
    assert runner._slots(grid, None) == 4  # 8 trials, 4 CPUs, 1 CPU each
    assert runner._slots(grid, 2) == 2
    resources.update(CPU=64.0)
    assert runner._slots(grid, None) == 8, "never more slots than trials"
    assert runner._slots(optuna_plan, None) == 5, "a search: its num_samples"
    resources.update(CPU=0.5)
    assert runner._slots(grid, None) == 1
    gpu = plan_of(axes={"meanflow.frac_r_neq_t": [0.0, 0.25, 0.5, 0.75]}, resources={"cpu": 1, "gpu": 0.5},
                  max_concurrent_trials=3)
    resources.update(CPU=16.0, GPU=1.0)
    assert runner._slots(gpu, None) == 2, "two half-GPU trials fit on one GPU"
    resources.update(GPU=4.0)
    assert runner._slots(gpu, None) == 3, "the study's max_concurrent_trials"
    assert runner._slots(gpu, 1) == 1, "--max-concurrent wins"


def test_run_plan_restores_only_from_its_own_storage(tmp_path, monkeypatch):
    """A rerun restores the Tune experiment (Ray's pickled state) from <storage.path>/<study>/<execution>
    and nowhere else; a first run creates it there."""
    storage = tmp_path / "store"
    plan = plan_of(axes={"meanflow.frac_r_neq_t": [0.0, 0.5]}, storage=str(storage))
    calls = []

    class FakeTracker:
        def __init__(self, uri, plan):
            self.uri = uri

        def open_parent(self, execution_id, text, resolved):
            return "parent-1", False

        def children(self):
            return []

        def flush(self): pass
        def mark_unfinished_stopped(self): pass
        def close_parent(self, status, rows): calls.append(("close", status))

    class FakeTuner:
        def fit(self):
            calls.append(("fit",))

    def fake_make(plan, storage_arg, name, callbacks, max_concurrent):
        calls.append(("make", storage_arg, name))
        return FakeTuner()

    def fake_restore(plan, path):
        calls.append(("restore", path))
        return FakeTuner()

    monkeypatch.setattr(runner, "StudyTracker", FakeTracker)
    monkeypatch.setattr(runner, "init_ray", lambda address, num_cpus: False)
    monkeypatch.setattr(runner, "_alive_nodes", lambda: 1)
    monkeypatch.setattr(runner, "_slots", lambda plan, mc: 1)
    monkeypatch.setattr(mtune, "make_tuner", fake_make)
    monkeypatch.setattr(mtune, "restore_tuner", fake_restore)
    monkeypatch.setattr(ray_tune.Tuner, "can_restore", staticmethod(lambda path: Path(path).is_dir()))

    first = runner.run_plan(plan, "name: units\n", tracking_uri="sqlite:///unused.db")
    study_dir = storage.resolve() / "units"
    assert calls[0] == ("make", str(study_dir), first.execution_id) and not first.resumed
    (study_dir / first.execution_id).mkdir(parents=True)  # what Tune would have written
    calls.clear()
    second = runner.run_plan(plan, "name: units\n", tracking_uri="sqlite:///unused.db")
    assert second.resumed and second.execution_id == first.execution_id
    [restore] = [c for c in calls if c[0] == "restore"]
    restored = Path(restore[1]).resolve()
    assert restored == study_dir / first.execution_id
    assert restored.is_relative_to(storage.resolve())
    assert not math.isnan(second.wall_s)


@pytest.mark.parametrize("eid", ["../../x", "/abs/path", "20261128-123456-abcdeg", "20261128-123456-abc", "", None, 7])
def test_execution_ids_not_written_by_mfsweep_are_refused(eid, tmp_path):
    with pytest.raises(ConfigError, match="execution_id"):
        runner.checked_execution({"execution_id": eid}, str(tmp_path))


def test_a_generated_execution_id_is_accepted(tmp_path):
    state = {"execution_id": "20261128-123456-0a9f3c", "fingerprint": "f"}
    assert runner.checked_execution(state, str(tmp_path)) is state
    assert runner.checked_execution(None, str(tmp_path)) is None


def _frac_search(lo, hi, batch):
    return parse_study({"name": "fs", "base": {"data": {"name": "moons"}, "train": {"batch_size": batch}},
                        "axes": {"meanflow.frac_r_neq_t": {"uniform": [lo, hi]}},
                        "search": {"algorithm": "optuna", "num_samples": 4}})


def test_a_searched_fraction_range_is_checked_at_validation():
    # from above 0: every value must give at least one r != t row (0.001 of 64 rows gives none)
    with pytest.raises(ConfigError, match=r"axes\.meanflow\.frac_r_neq_t.*searched range"):
        make_plan(_frac_search(0.001, 0.5, 64))
    make_plan(_frac_search(0.05, 0.5, 64))  # 0.05 of 64 = 3 rows: fine
    # from 0: Flow Matching is in the range by choice, so tiny suggestions are accepted ...
    plan = make_plan(_frac_search(0.0, 0.75, 64))
    spec = plan.search_trial(0, {"meanflow.frac_r_neq_t": 0.001})  # ... and never stop the study mid-way
    assert spec.config.meanflow.frac_r_neq_t == 0.001
    # ... but a batch too small to realise the range's shares within the tolerance is refused
    with pytest.raises(ConfigError, match="off by more than"):
        make_plan(_frac_search(0.0, 0.75, 3))
