"""Study files: validation (every error at once, dotted paths), grid / random / Optuna expansion,
deterministic trial ids, the CLI's validate / run --dry-run exit codes, and the start-up checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mfsweep.cli import main
from mfsweep.config import ConfigError
from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.study import load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "studies").glob("*.yaml")) + sorted((ROOT / "studies" / "paper").glob("*.yaml"))
TOY_BASE = {"data": {"name": "moons"}, "model": {"hidden_dim": 16, "depth": 1}, "train": {"steps": 10}}


def plan_of(raw: dict):
    return make_plan(parse_study(raw))


def errors_of(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        plan_of(raw)
    return dict(exc.value.errors)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_study_validates_and_expands(path):
    study, text = load_study(path)
    plan = make_plan(study)
    assert text.lstrip().startswith("#"), "a shipped study opens with a comment naming what it mirrors"
    if study.search.algorithm != "grid":  # points come from the sampler (optuna) or are pre-drawn (random)
        expected = 0 if study.search.algorithm == "optuna" else study.search.num_samples * len(study.seeds)
        assert len(plan.trials) == expected and plan.metric
        return
    n_cells = math.prod(len(v) for v in study.axes.values())
    assert len(plan.trials) == n_cells * len(study.seeds)
    ids = [t.trial_id for t in plan.trials]
    assert len(set(ids)) == len(ids)
    assert plan.axis_keys[-1] == "seed" and plan.metric
    for t in plan.trials:
        assert t.config.seed == t.seed and t.config.name == t.trial_id
        assert t.tags["seed"] == str(t.seed) and set(t.tags) == set(plan.axis_keys)
    cells = {tuple(v for k, v in t.tags.items() if k != "seed") for t in plan.trials}
    assert len(cells) == n_cells, "every grid cell is distinguishable by its axis tags"


def test_rt_sampling_reports_leaf_axes_and_ids():
    plan = make_plan(load_study(ROOT / "studies" / "rt_sampling.yaml")[0])
    assert plan.axis_keys == ["meanflow.frac_r_neq_t", "meanflow.time_sampler.name", "seed"]
    t = plan.trials[3]
    assert t.trial_id == "t003-frac_r_neq_t=0.25-time_sampler=logit_normal-seed=0"
    assert t.config.meanflow.time_sampler.name == "logit_normal" and t.config.meanflow.frac_r_neq_t == 0.25
    assert plan.trials[2].config.meanflow.time_sampler.name == "uniform"


def test_many_errors_at_once_with_dotted_paths(tmp_path, capsys):
    raw = {"name": "bad", "base": {**TOY_BASE, "train": {"stepz": 10}},
           "axes": {"meanflow.frac_r_ne_t": [0.1], "meanflow.weight_power": [0.0, -1.0]},
           "search": {"algorithm": "bayes"}, "seeds": [0, 0], "resources": {"cpu": 0}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    for needle in ("search.algorithm", "seeds", "resources.cpu", "axes.meanflow.frac_r_ne_t", "base.train.stepz",
                   "did you mean meanflow.frac_r_neq_t"):
        assert needle in err, needle
    # once the file's structure is right, the trial configs are checked against the axis values
    raw.update(search={"algorithm": "grid"}, seeds=[0], resources={"cpu": 1})
    raw["axes"].pop("meanflow.frac_r_ne_t")
    errs = errors_of(raw)
    assert "base.train.stepz" in errs
    raw["base"] = TOY_BASE
    errs = errors_of(raw)
    assert list(errs) == ["axes.meanflow.weight_power[1]"] and "greater than or equal to 0" in errs[
        "axes.meanflow.weight_power[1]"]


def test_combination_errors_name_the_trial():
    raw = {"name": "combo", "base": {**TOY_BASE, "data": {"name": "digits", "conditional": True}},
           "axes": {"data.conditional": [True, False], "meanflow.cfg.omega": [1.0, 2.0]}}
    errs = errors_of(raw)
    assert list(errs) == ["trial t003-conditional=false-omega=2.0-seed=0"]
    assert "data.conditional" in errs["trial t003-conditional=false-omega=2.0-seed=0"]


def test_eval_overrides_and_base_seed_paths():
    errs = errors_of({"name": "ev", "base": {**TOY_BASE, "seed": 3}, "eval": {"nfe": [0], "bogus": 1}})
    assert {"base.seed", "eval.nfe", "eval.bogus"} <= set(errs)


def test_set_overrides_study_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": TOY_BASE, "axes": {"meanflow.tangent": ["v01"]}}))
    study, _ = load_study(path, ["base.train.steps=7", "seeds=[3, 4]", "axes.meanflow.tangent=[v00, v11]"])
    plan = make_plan(study)
    assert [t.trial_id for t in plan.trials][:2] == ["t000-tangent=v00-seed=3", "t001-tangent=v11-seed=3"]
    assert {t.config.train.steps for t in plan.trials} == {7} and len(plan.trials) == 4
    assert main(["run", str(path), "--dry-run", "--set", "base.train.steps=0"]) == 2
    assert main(["run", str(path), "--dry-run"]) == 0


def test_random_search_is_drawn_once_and_deterministic():
    raw = {"name": "rnd", "base": TOY_BASE, "seeds": [0, 1],
           "search": {"algorithm": "random", "num_samples": 3, "seed": 7},
           "axes": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.depth": {"int": [1, 3]},
                    "meanflow.tangent": ["v01", "v00"]}}
    a, b = plan_of(raw), plan_of(raw)
    assert [t.trial_id for t in a.trials] == [t.trial_id for t in b.trials] and len(a.trials) == 6
    for t in a.trials:
        assert 1e-4 <= t.config.train.lr <= 1e-2 and t.config.model.depth in (1, 2, 3)
    assert [t.choices for t in a.trials[:3]] == [t.choices for t in a.trials[3:]], "each point runs every seed"
    raw["search"]["seed"] = 8
    assert [t.choices for t in plan_of(raw).trials] != [t.choices for t in a.trials]


def test_optuna_space_bounds_are_validated_and_trials_compose():
    raw = {"name": "opt", "base": TOY_BASE, "seeds": [0, 1],
           "search": {"algorithm": "optuna", "num_samples": 4, "metric": "swd/nfe_1"},
           "axes": {"meanflow.frac_r_neq_t": {"uniform": [0.0, 2.0]}}}
    assert "axes.meanflow.frac_r_neq_t.uniform" in errors_of(raw)
    raw["axes"] = {"meanflow.frac_r_neq_t": {"uniform": [0.0, 1.0]},
                   "meanflow.time_sampler": {"choice": [{"name": "uniform"}, {"name": "logit_normal", "mu": 0.5}]}}
    plan = plan_of(raw)
    assert plan.trials == [] and plan.axis_keys[:2] == ["meanflow.frac_r_neq_t", "meanflow.time_sampler.name"]
    label = plan.axes[1].choices()[1]
    spec = plan.search_trial(3, {"meanflow.frac_r_neq_t": 0.123456, "meanflow.time_sampler": label})
    assert spec.trial_id == "t003-frac_r_neq_t=0.1235-time_sampler=logit_normal-seed=1"
    assert spec.config.meanflow.time_sampler.mu == 0.5 and spec.config.seed == 1


def test_search_and_scheduler_metric_checks():
    raw = {"name": "m", "base": TOY_BASE, "scheduler": {"name": "asha"}, "search": {"metric": "swd/nfe_3"},
           "eval": {"nfe": [1, 2]}}
    errs = errors_of(raw)
    assert "NFE 3" in errs["search.metric"] and "every_steps" in errs["scheduler.name"]
    raw["search"] = {"metric": "nope/nfe_1"}
    assert "search.metric" in errors_of(raw)


def test_labelled_values_and_grid_distribution_mismatch():
    raw = {"name": "lab", "base": TOY_BASE,
           "axes": {"model": {"small": {"hidden_dim": 8}, "big": {"hidden_dim": 32}}}}
    plan = plan_of(raw)
    assert [t.tags["model"] for t in plan.trials] == ["small", "big"]
    assert plan.trials[1].config.model.hidden_dim == 32 and plan.trials[1].config.model.depth == 1
    raw["axes"] = {"train.lr": {"uniform": [0.1, 0.2]}}
    assert "axes.train.lr.uniform" in errors_of(raw)


def test_unknown_keys_in_axes_and_reserved_seed():
    errs = errors_of({"name": "k", "base": TOY_BASE, "axes": {"seed": [1, 2], "model.hiden_dim": [8]}})
    assert "seeds" in errs["axes.seed"]
    assert "model.hidden_dim" in errs["axes.model.hiden_dim"]


def test_fingerprint_follows_the_trials():
    raw = {"name": "f", "base": TOY_BASE, "axes": {"meanflow.tangent": ["v01", "v00"]}}
    a = plan_of(raw).fingerprint()
    assert plan_of(raw).fingerprint() == a
    raw["base"] = {**TOY_BASE, "train": {"steps": 11}}
    assert plan_of(raw).fingerprint() != a


def test_missing_npy_file_is_caught_at_validation(tmp_path):
    errs = errors_of({"name": "n", "base": {**TOY_BASE, "data": {"name": "npy", "path": str(tmp_path / "x.npy")}}})
    assert any("file not found" in m for m in errs.values())


def test_storage_and_tracking_checks(monkeypatch, tmp_path):
    from mfsweep.sweep.runner import check_storage
    from mfsweep.sweep.tracking import resolve_tracking_uri

    check_storage("/tmp/x", False, None, "sqlite:////tmp/m.db", nodes=1)
    check_storage("s3://bucket/x", False, "10.0.0.1:6379", "sqlite:////tmp/m.db", nodes=3)
    check_storage("/shared/x", True, "10.0.0.1:6379", "sqlite:////tmp/m.db", nodes=3)
    with pytest.raises(ConfigError) as exc:
        check_storage("/tmp/x", False, "10.0.0.1:6379", "sqlite:////tmp/m.db", nodes=3)
    assert exc.value.errors[0][0] == "storage.path"
    with pytest.raises(ConfigError) as exc:
        check_storage("/tmp/x", False, "ray://head:10001", "sqlite:////tmp/m.db", nodes=1)
    assert {p for p, _ in exc.value.errors} == {"storage.path", "tracking.uri"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None, "http://a:1") == "http://a:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:2")
    assert resolve_tracking_uri(None, "http://a:1") == "http://env:2"
    assert resolve_tracking_uri("http://flag:3", "http://a:1") == "http://flag:3"


def test_short_names_for_trial_ids():
    from mfsweep.schema import short_axis_name as short_name

    keys = ["method.name", "meanflow.frac_r_neq_t", "meanflow.time_sampler.name", "model.time_embedding"]
    assert [short_name(k, keys) for k in keys] == ["method", "frac_r_neq_t", "time_sampler", "time_embedding"]
    # two axes that would share a short name keep their full keys
    assert short_name("a.lr", ["a.lr", "b.lr"]) == "a.lr" and short_name("x.y.name", ["x.y.name", "z.y"]) == "x.y.name"


def test_a_higher_is_better_search_metric_needs_mode_max():
    raw = {"name": "pr", "base": {**TOY_BASE, "eval": {"every_steps": 5}},
           "axes": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
           "search": {"algorithm": "optuna", "num_samples": 2, "metric": "recall/nfe_1"},
           "scheduler": {"name": "asha", "grace_period": 2}}
    errs = errors_of(raw)
    assert "higher-is-better" in errs["search.mode"] and "scheduler.mode" in errs
    raw["search"]["mode"] = "max"
    assert plan_of(raw).metric == "recall/nfe_1"  # the scheduler follows search.mode


def test_baseline_names_an_axis_value_and_becomes_the_reported_tags():
    raw = {"name": "b", "base": TOY_BASE, "seeds": [0, 1],
           "axes": {"meanflow.frac_r_neq_t": [0.0, 0.25],
                    "meanflow.time_sampler": [{"name": "uniform"}, {"name": "logit_normal", "mu": -0.4}],
                    "model": {"small": {"hidden_dim": 8}, "big": {"hidden_dim": 16}}},
           "baseline": {"meanflow.frac_r_neq_t": 0.25, "model": "small",
                        "meanflow.time_sampler": {"name": "uniform"}}}
    plan = plan_of(raw)
    assert plan.baseline == {"meanflow.frac_r_neq_t": "0.25", "model": "small",
                             "meanflow.time_sampler.name": "uniform"}
    assert all(plan.baseline[k] in {t.tags[k] for t in plan.trials} for k in plan.baseline)
    raw["baseline"] = {"meanflow.frac_r_neq_t": 0.5, "train.lr": 1.0}
    errs = errors_of(raw)
    assert "not one of the axis's values: 0.0, 0.25" in errs["baseline.meanflow.frac_r_neq_t"]
    assert "not an axis" in errs["baseline.train.lr"]
