"""The CLI's error mapping, as a user meets it: bad input → exit 2 with one line naming the file, the
path and the line, nothing written; a real bug → exit 1, one line, the traceback saved to a file.

Most cases run ``mfsweep`` as a subprocess (real exit codes, real stderr); the internal error and
the ``--yes`` gate are run in-process, with ``run_plan`` replaced so that no Ray or MLflow starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mfsweep.cli import main
from mfsweep.config import FRAC_TOLERANCE, load_trial_config, realised_r_neq_t

ROOT = Path(__file__).resolve().parents[2]
RT = ROOT / "studies" / "rt_sampling.yaml"
TOY = {"data": {"name": "moons"}, "model": {"hidden_dim": 16, "depth": 1}, "train": {"steps": 10}}


def mfsweep(args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "mfsweep.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def grid_study(path: Path, n_lr: int, n_width: int, seeds: int) -> Path:
    axes = {"train.lr": [round(1e-4 * (i + 1), 6) for i in range(n_lr)],
            "model.hidden_dim": list(range(4, 4 + n_width))}
    path.write_text(yaml.safe_dump({"name": "big", "base": TOY, "axes": axes, "seeds": list(range(seeds))}))
    return path


def test_non_utf8_study_is_one_line_naming_the_offset(tmp_path):
    (tmp_path / "s.yaml").write_bytes(b"# caf\xe9\nname: x\n")
    line = one_line_error(mfsweep(["validate", "s.yaml"], tmp_path))
    assert "s.yaml" in line and "not UTF-8" in line and "offset 5" in line
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


def test_duplicate_name_names_the_key_and_its_line(tmp_path):
    (tmp_path / "s.yaml").write_text("name: first\nbase: {data: {name: moons}}\nname: second\n")
    line = one_line_error(mfsweep(["validate", "s.yaml"], tmp_path))
    assert "name: duplicate key 'name' at line 3 (first at line 1)" in line


def test_hostile_yaml_is_refused_without_running_it(tmp_path):
    (tmp_path / "tag.yaml").write_text('name: x\nbase: !!python/object/apply:os.system ["touch pwned"]\n')
    line = one_line_error(mfsweep(["validate", "tag.yaml"], tmp_path))
    assert "base: YAML tag !!python/object/apply:os.system is not allowed" in line
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text("name: x\n" + bomb)
    line = one_line_error(mfsweep(["validate", "bomb.yaml"], tmp_path))
    assert "aliases expanded, the document holds more than 50,000 values" in line
    (tmp_path / "deep.yaml").write_text("name: x\nbase: " + "[" * 10000 + "]" * 10000 + "\n")
    line = one_line_error(mfsweep(["validate", "deep.yaml"], tmp_path))
    assert "nested deeper than" in line and "line 2" in line
    line = one_line_error(mfsweep(["validate", "."], tmp_path))
    assert "is a folder" in line
    assert not (tmp_path / "pwned").exists()
    assert sorted(os.listdir(tmp_path)) == ["bomb.yaml", "deep.yaml", "tag.yaml"]


def test_ten_thousand_trials_need_yes_before_ray_or_mlflow(tmp_path):
    grid_study(tmp_path / "big.yaml", 100, 50, 2)
    line = one_line_error(mfsweep(["run", "big.yaml", "--num-cpus", "1"], tmp_path))
    assert "10,000 trials" in line and "--yes" in line and "max_trials" in line
    assert sorted(os.listdir(tmp_path)) == ["big.yaml"], "no mlflow.db, no runs/"
    proc = mfsweep(["validate", "big.yaml"], tmp_path)  # validate warns but passes
    assert proc.returncode == 0 and "warning: 10,000 trials, more than max_trials 1,000" in proc.stdout, proc.stderr
    # a raised max_trials lets it through to the dry run
    proc = mfsweep(["run", "big.yaml", "--dry-run", "--set", "max_trials=20000"], tmp_path)
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["big.yaml"]


def test_grid_beyond_the_expansion_limit_is_refused_by_every_command(tmp_path):
    grid_study(tmp_path / "huge.yaml", 500, 250, 1)  # 125,000 trials
    for cmd in (["validate"], ["run", "--yes"]):
        line = one_line_error(mfsweep([*cmd, "huge.yaml"], tmp_path))
        assert "axes: 125,000 trials; mfsweep expands at most 100,000" in line
    assert sorted(os.listdir(tmp_path)) == ["huge.yaml"]


def test_report_without_the_study_is_exit_2_one_line(tmp_path, monkeypatch, capsys):
    """In-process (MLflow's import is the slow part): StudyNotFound is exit 2, one line, no traceback."""
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(RT), "--tracking-uri", "sqlite:///absent.db"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no MLflow store at" in err and "mfsweep run" in err, err
    assert not (tmp_path / "absent.db").exists(), "report does not create a store"
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path}/empty.db").search_experiments()  # an empty store
    capsys.readouterr()  # (MLflow's own log lines while creating it)
    assert main(["report", str(RT), "--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: no MLflow experiment named 'rt_sampling'"], err
    assert sorted(os.listdir(tmp_path)) == ["empty.db"], "no reports/ folder"


def test_frac_that_the_batch_cannot_realise_is_refused(tmp_path):
    proc = mfsweep(["validate", RT, "--set", "base.train.batch_size=2"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # 0.25 of 2 rows rounds to 0: the base and the axis value 0.25 are named; 0.5 and 1.0 are fine
    assert "base.meanflow.frac_r_neq_t: 0.25 of train.batch_size 2 rounds to 0 rows" in proc.stderr
    assert "axes.meanflow.frac_r_neq_t[1]: 0.25 of train.batch_size 2" in proc.stderr
    assert "axes.meanflow.frac_r_neq_t[2]" not in proc.stderr and "axes.meanflow.frac_r_neq_t[3]" not in proc.stderr
    # 3 rows: 0.25 → 1/3 is off by more than the tolerance
    proc = mfsweep(["validate", RT, "--set", "base.train.batch_size=3"], tmp_path)
    assert proc.returncode == 2 and "is realised as 1 of 3 rows" in proc.stderr
    assert mfsweep(["validate", RT, "--set", "base.train.batch_size=4"], tmp_path).returncode == 0
    assert os.listdir(tmp_path) == []


def test_frac_check_matches_the_loss_and_fires_for_train(tmp_path, capsys):
    from mfsweep.methods.timesteps import num_r_neq_t, sample_t_r

    for b in (1, 2, 3, 4, 5, 8, 10, 64, 255):
        for frac in (0.0, 0.1, 0.125, 0.25, 0.3, 0.5, 0.75, 1.0):
            n = realised_r_neq_t(b, frac)
            assert n == num_r_neq_t(b, frac)
            t, r = sample_t_r(b, "uniform", {}, frac)
            assert int((t != r).sum()) <= n and bool((t[n:] == r[n:]).all())
            raw = {"meanflow": {"frac_r_neq_t": frac}, "train": {"batch_size": b}}
            ok = not (frac > 0 and n == 0) and abs(n / b - frac) <= FRAC_TOLERANCE + 1e-12
            if ok:
                load_trial_config(raw)
            else:
                with pytest.raises(ValueError, match="meanflow.frac_r_neq_t"):
                    load_trial_config(raw)
    # flow matching does not read the fraction: no refusal
    load_trial_config({"method": {"name": "flow_matching"}, "train": {"batch_size": 2}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TOY, "meanflow": {"frac_r_neq_t": 0.25}}))
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--set", "train.batch_size=2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "meanflow.frac_r_neq_t: 0.25 of train.batch_size 2 rounds to 0 rows" in err and not out.exists()


def test_base_and_axis_errors_are_reported_together(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "both", "base": {**TOY, "train": {"steps": 10, "lr": -1.0}},
                                    "axes": {"meanflow.weight_power": [1.0, -2.0], "model.depth": [1, 0]}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(3 errors)" in err, err
    for needle in ("base.train.lr", "axes.meanflow.weight_power[1]", "axes.model.depth[1]"):
        assert needle in err, needle
    assert "axes.meanflow.weight_power[0]" not in err, "the base's own error is not repeated per axis value"


def test_yes_goes_on_and_an_internal_error_saves_its_traceback(tmp_path, monkeypatch, capsys):
    import mfsweep.sweep.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("boom in run_plan")

    monkeypatch.setattr(runner, "run_plan", broken)
    monkeypatch.setenv("MFSWEEP_ERROR_DIR", str(tmp_path / "errors"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    grid_study(tmp_path / "big.yaml", 30, 40, 1)  # 1,200 trials
    assert main(["run", "big.yaml"]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert main(["run", "big.yaml", "--yes"]) == 1  # past the gate, into the (broken) runner
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    m = re.search(r"traceback in (\S+\.log);", err)
    assert m and "RuntimeError: boom in run_plan" in err, err
    log = Path(m.group(1))
    assert log.parent == tmp_path / "errors" and log.is_file()
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom in run_plan" in text
    assert "mfsweep run big.yaml --yes" in text
    assert sorted(os.listdir(tmp_path)) == ["big.yaml", "errors"]


def test_set_with_a_python_tag_is_bad_input(tmp_path, capsys):
    assert main(["validate", str(RT), "--set", "name=!!python/object/apply:os.system [true]"]) == 2
    err = capsys.readouterr().err
    assert "--set name" in err and "not allowed" in err
