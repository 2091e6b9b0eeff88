"""Fabricate a small mfsweep study directly in MLflow, following docs/architecture.md.

The study `fake_sampler` (paper table "1d") sweeps one axis, `meanflow.time_sampler.name`, over
two values with awkward characters (`logit_normal`, `50%_mix`) and two seeds, and records
`final/swd/nfe_{1,2,4}` for each trial. A fifth trial (`50%_mix`, seed 2) failed with an error
tag and no final metrics. An older parent run of the same study (one decoy child) checks that
`load_study` picks the most recent execution.

`build_fake_study(root)` writes it under `root` (sqlite store + file artifact root) and returns a
`FakeStudy` holding the exact values logged, so tests can recompute everything independently.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

STUDY = "fake_sampler"
EXPERIMENT = "fake-sampler-exp"
AXIS = "meanflow.time_sampler.name"
VALUES = ["logit_normal", "50%_mix"]
SEEDS = [0, 1]
NFES = [1, 2, 4]
FAILED_VALUE = "50%_mix"
FAILED_ERROR = "RuntimeError: loss became NaN at step 120 (diverged)"
BASE_CONFIG = "data:\n  name: two_moons\nmeanflow:\n  frac_r_neq_t: 0.25\ntrain:\n  steps: 100\n"


@dataclass
class FakeStudy:
    """What was written: tracking URI, ids and the logged final values."""

    root: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    old_parent_run_id: str
    # (axis value, seed) -> {nfe: value}
    finals: dict[tuple[str, int], dict[int, float]] = field(default_factory=dict)
    run_names: dict[tuple[str, int], str] = field(default_factory=dict)
    failed_run_id: str = ""


def _ms(offset_s: float = 0.0) -> int:
    return int((time.time() + offset_s) * 1000)


def _parent(client, exp_id, start_ms, scratch: Path) -> str:
    tags = {
        "mfsweep.role": "study", "mfsweep.study": STUDY, "mfsweep.version": "0.1.0",
        "mfsweep.git_commit": "abc1234", "mfsweep.axes": json.dumps([AXIS, "seed"]),
        "mfsweep.paper_table": "1d",
        "mfsweep.description": "Time sampler ablation on two moons & friends (fake).",
    }
    run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=STUDY)
    rid = run.info.run_id
    for name, text in [("study.yaml", f"name: {STUDY}\n"), ("base_config.yaml", BASE_CONFIG),
                       ("trials.csv", "trial_id,seed\n")]:
        p = scratch / rid / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        client.log_artifact(rid, str(p))
    return rid


def _child(client, exp_id, parent_id, idx, value, seed, status, scratch, rng, fake, start_ms):
    trial_id = f"t{idx:03d}-name={value}-seed={seed}"
    tags = {
        "mlflow.parentRunId": parent_id, "mfsweep.role": "trial", "mfsweep.study": STUDY,
        "mfsweep.trial_id": trial_id, "mfsweep.status": status,
        f"axis.{AXIS}": value, "axis.seed": str(seed),
        "metric.swd.num_samples": "512",
    }
    if status != "finished":
        tags["mfsweep.error"] = FAILED_ERROR
    run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=trial_id)
    rid = run.info.run_id
    ts = _ms()
    metrics = [Metric("train/loss", float(1.0 / (1 + s)), ts, s) for s in range(0, 101, 20)]
    params = [Param(AXIS, value), Param("seed", str(seed))]
    for step in (50, 100):
        for k in NFES:
            metrics.append(Metric(f"eval/swd/nfe_{k}", float(rng.uniform(0.05, 0.5)), ts, step))
        metrics.append(Metric("eval/num_samples", 128.0, ts, step))
    if status == "finished":
        finals = {k: float(rng.uniform(0.01, 0.3)) for k in NFES}
        metrics += [Metric(f"final/swd/nfe_{k}", v, ts, 100) for k, v in finals.items()]
        metrics += [Metric("final/num_samples", 512.0, ts, 100),
                    Metric("time/train_s", 3.5, ts, 100)]
        fake.finals[(value, seed)] = finals
        d = scratch / rid / "samples"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "nfe_1.npy", rng.normal(size=(64, 2)).astype(np.float32))
        for k in (1, 2):
            img = (rng.uniform(size=(8, 8, 3)) * 255).astype(np.uint8)
            _write_png(d / f"nfe_{k}.png", img)
        client.log_artifacts(rid, str(d), "samples")
    client.log_batch(rid, metrics=metrics, params=params)
    client.set_terminated(rid, "FINISHED" if status == "finished" else "FAILED")
    fake.run_names[(value, seed)] = trial_id
    return rid


def _write_png(path: Path, img: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, img)


def build_fake_study(root: Path) -> FakeStudy:
    """Write the fake study under `root`; return what was logged."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    scratch = root / "scratch"
    rng = np.random.default_rng(0)
    old = _parent(client, exp_id, _ms(-3600), scratch)
    decoy = FakeStudy(root, uri, exp_id, "", old)
    _child(client, exp_id, old, 0, VALUES[0], 0, "finished", scratch, rng, decoy, _ms(-3500))
    client.set_terminated(old, "FINISHED")
    parent = _parent(client, exp_id, _ms(), scratch)
    fake = FakeStudy(root, uri, exp_id, parent, old)
    idx = 0
    for value in VALUES:
        for seed in SEEDS:
            _child(client, exp_id, parent, idx, value, seed, "finished", scratch, rng, fake, _ms())
            idx += 1
    fake.failed_run_id = _child(client, exp_id, parent, idx, FAILED_VALUE, 2, "failed",
                                scratch, rng, fake, _ms())
    client.set_terminated(parent, "FINISHED")
    return fake


_CACHE: dict[str, FakeStudy] = {}


def cached_fake_study(tmp_path_factory) -> FakeStudy:
    """One fake study per pytest session (building the sqlite store costs a few seconds)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _CACHE:
        _CACHE[key] = build_fake_study(tmp_path_factory.mktemp("fake_study"))
    return _CACHE[key]


_REPORTS: dict[str, tuple[FakeStudy, dict]] = {}


def cached_report(tmp_path_factory) -> tuple[FakeStudy, dict]:
    """The fake study plus `analysis.report.write_report`'s paths (built once per session)."""
    from analysis.report import write_report

    key = str(tmp_path_factory.getbasetemp())
    if key not in _REPORTS:
        fake = cached_fake_study(tmp_path_factory)
        out = fake.root / "report"
        _REPORTS[key] = (fake, write_report(STUDY, fake.tracking_uri, out, EXPERIMENT))
    return _REPORTS[key]
