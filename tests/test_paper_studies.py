"""studies/paper/: the paper's studies validate, say what they cost, and their --smoke versions run
end to end (Ray Tune, MLflow, report with the paper column) on this CPU, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mfsweep.config import get_dotted
from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.smoke import SMOKE_STEPS, smoke_backbone, smoke_study
from mfsweep.sweep.study import load_study

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "studies" / "paper").glob("*.yaml"))


def test_the_paper_studies_are_all_there():
    names = {p.stem for p in PAPER}
    assert {f"table1{c}" for c in "abcdef"} <= {n[:7] for n in names}
    assert {"table2_system", "cifar10"} <= names


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_study_header_states_trials_and_gpu_hours(path):
    study, text = load_study(path)
    plan = make_plan(study)
    header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
    m = re.search(r"(\d+) trials? ×", header)
    assert m and int(m.group(1)) == len(plan.trials), "the header's trial count is the plan's"
    assert re.search(r"≈ \d+ H100 GPU-hours", header) and "benchmarks/gpu_hours.py" in header
    assert study.paper_table, "each paper study names its table, so the report prints the paper column"
    cfg = plan.trials[0].config
    assert cfg.train.beta2 in (0.95, 0.999) and cfg.train.grad_clip is None  # the paper: no clipping


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_smoke_version_is_tiny_offline_and_keeps_the_structure(path):
    full, _ = load_study(path)
    study, text = load_study(path, smoke=True)
    assert study.name == full.name + "_smoke" and text.endswith("# --smoke\n")
    plan, full_plan = make_plan(study), make_plan(full)
    assert study.paper_table == full.paper_table and set(study.axes) == set(full.axes)
    assert study.resources.gpu == 0 and len(study.seeds) == 1
    for spec in plan.trials:
        c = spec.config
        assert c.model.backbone in ("dit_tiny", "unet_cifar_tiny")
        assert c.model.backbone == smoke_backbone(full_plan.trials[0].config.model.backbone)
        assert c.train.steps <= SMOKE_STEPS and c.train.device == "cpu" and not c.train.compile
        assert c.data.name in ("synthetic_images", "latents") and c.eval.metrics == ["swd"]
        assert c.eval.reference_stats is None and c.eval.num_samples <= 64
    # the swept values are the study's own (the paper column matches on them)
    for key in full.axes:
        if key != "model.backbone":
            assert {t.tags.get(key) for t in plan.trials} <= {t.tags.get(key) for t in full_plan.trials}


def test_smoke_dedupes_backbone_axes_and_leaves_small_studies_alone():
    raw = {"name": "s", "base": {"data": {"name": "cifar10"}, "model": {"backbone": "dit_b2"}},
           "axes": {"model.backbone": ["dit_b2", "dit_xl2", "unet_cifar"]}}
    out = smoke_study(raw)
    assert out["axes"]["model.backbone"] == ["dit_tiny", "unet_cifar_tiny"]
    assert raw["axes"]["model.backbone"] == ["dit_b2", "dit_xl2", "unet_cifar"]  # input not modified
    toy = smoke_study({"name": "t", "base": {"data": {"name": "moons"}, "train": {"steps": 5}}})
    assert toy["base"]["data"] == {"name": "moons"} and toy["base"]["train"]["steps"] == 5
    assert "metrics" not in toy["base"]["eval"]  # vectors keep their default metrics


def _run(args, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "mfsweep.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["table1a_rt_ratio", "cifar10"])
def test_smoke_run_end_to_end_with_the_paper_column(tmp_path, name):
    """A DiT study on (demo) VAE latents and the CIFAR U-Net study: every trial finishes through Ray
    Tune and MLflow, and the report's table carries the paper's numbers."""
    path = ROOT / "studies" / "paper" / f"{name}.yaml"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = _run(["run", str(path), "--smoke", "--tracking-uri", uri, "--num-cpus", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"{name}_smoke")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
    study, _ = load_study(path, smoke=True)
    assert len(trials) == len(make_plan(study).trials)
    for r in trials:
        assert r.info.status == "FINISHED"
        assert r.data.metrics["final/swd/nfe_1"] > 0
        assert get_dotted({"m": r.data.params}, "m")["model.backbone"] in ("dit_tiny", "unet_cifar_tiny")
    out = tmp_path / "report"
    rep = _run(["report", str(path), "--smoke", "--tracking-uri", uri, "--out", str(out)], tmp_path, 300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    md = next(out.rglob("*.md")).read_text()
    assert "paper (1-NFE FID)" in md
    paper_value = {"table1a_rt_ratio": "61.06", "cifar10": "2.92"}[name]
    assert paper_value in md
