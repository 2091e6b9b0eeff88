"""Load one mfsweep study from MLflow into tidy pandas tables.

Reads only MLflow (schema in docs/architecture.md, "MLflow schema"): the most recent parent run
tagged `mfsweep.role=study`, `mfsweep.study=<name>`, and its child runs (`mlflow.parentRunId`).
From the `mfsweep` package only `mfsweep.schema` (key formats; no torch, no training code) is imported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

# `{phase}/{metric}/nfe_{k}`, e.g. `final/swd/nfe_1` (docs/architecture.md, "Metric keys").
from mfsweep.schema import LOGGED_METRIC_KEY as METRIC_KEY
from mfsweep.schema import quote



class StudyNotFound(LookupError):
    """No parent run with `mfsweep.role=study` and the given study name."""


@dataclass
class StudyRuns:
    """A study's parent run and child (trial) runs, as fetched from MLflow."""

    study_name: str
    tracking_uri: str | None
    client: MlflowClient
    experiment_id: str
    experiment_name: str
    parent: Run
    children: list[Run] = field(default_factory=list)

    @property
    def axes(self) -> list[str]:
        """Dotted axis keys from the parent's `mfsweep.axes` tag (seed last), or from children."""
        raw = self.parent.data.tags.get("mfsweep.axes")
        if raw:
            return list(json.loads(raw))
        keys = {k[5:] for c in self.children for k in c.data.tags if k.startswith("axis.")}
        return sorted(keys - {"seed"}) + (["seed"] if "seed" in keys else [])

    @property
    def row_axes(self) -> list[str]:
        """Axes that define a variant: every axis except `seed`."""
        return [a for a in self.axes if a != "seed"]

    @property
    def paper_table(self) -> str | None:
        return self.parent.data.tags.get("mfsweep.paper_table") or None

    @property
    def description(self) -> str:
        return self.parent.data.tags.get("mfsweep.description", "")

    def tag(self, key: str, default: str = "") -> str:
        return self.parent.data.tags.get(key, default)


def _search_all(client: MlflowClient, exp_ids: list[str], filt: str, order=None) -> list[Run]:
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filt, ViewType.ACTIVE_ONLY, 1000, order, token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _experiment_ids(client: MlflowClient, study_name: str, experiment: str | None) -> list[str]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise StudyNotFound(f"no MLflow experiment named {experiment!r}")
        return [exp.experiment_id]
    exp = client.get_experiment_by_name(study_name)  # the default experiment is the study name
    if exp is not None:
        return [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def load_study(study_name: str, tracking_uri: str | None = None,
               experiment: str | None = None) -> StudyRuns:
    """Fetch the most recent execution of `study_name` (parent run + children).

    `experiment` defaults to the experiment named after the study, falling back to a search of
    all active experiments. Raises `StudyNotFound` when no parent run matches.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_ids = _experiment_ids(client, study_name, experiment)
    filt = f"tags.`mfsweep.role` = 'study' and tags.`mfsweep.study` = '{quote(study_name)}'"
    parents = _search_all(client, exp_ids, filt, ["attributes.start_time DESC"])
    if not parents:
        raise StudyNotFound(f"no parent run for study {study_name!r} in experiments {exp_ids}")
    parent = parents[0]
    exp_id = parent.info.experiment_id
    kids = _search_all(client, [exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    kids.sort(key=lambda r: (r.data.tags.get("mfsweep.trial_id", r.info.run_name or ""),
                             r.info.start_time or 0))
    return StudyRuns(study_name, tracking_uri, client, exp_id,
                     client.get_experiment(exp_id).name, parent, kids)


def _trial_row(study: StudyRuns, run: Run) -> dict:
    tags = run.data.tags
    seed = tags.get("axis.seed")
    row = {
        "run_id": run.info.run_id,
        "trial_id": tags.get("mfsweep.trial_id", run.info.run_name),
        "status": tags.get("mfsweep.status", run.info.status.lower()),
        "error": tags.get("mfsweep.error", ""),
        "seed": int(seed) if seed not in (None, "") and seed.lstrip("-").isdigit() else seed,
        "train_s": run.data.metrics.get("time/train_s", math.nan),
    }
    for axis in study.row_axes:
        row[axis] = tags.get(f"axis.{axis}", "")
    return row


def trials(study: StudyRuns) -> pd.DataFrame:
    """One row per trial: run_id, trial_id, status, error, seed, train_s (training wall time), one
    column per axis."""
    cols = ["run_id", "trial_id", "status", "error", "seed", "train_s", *study.row_axes]
    return pd.DataFrame([_trial_row(study, r) for r in study.children], columns=cols)


def tidy(study: StudyRuns, phases: tuple[str, ...] = ("final", "eval")) -> pd.DataFrame:
    """One row per trial × phase × metric × NFE (the latest logged value of each key).

    Columns: run_id, trial_id, status, error, seed, train_s, <axes...>, metric, nfe, value, phase,
    num_samples. Every (phase, metric, nfe) key seen in any trial is given to every trial, so a
    failed or diverged trial keeps its rows, with value NaN where nothing was logged.
    """
    keys, per_run = set(), {}
    for run in study.children:
        found = {}
        for key, value in run.data.metrics.items():
            m = METRIC_KEY.match(key)
            if m and m.group(1) in phases:
                found[(m.group(1), m.group(2), int(m.group(3)))] = value
        per_run[run.info.run_id] = found
        keys.update(found)
    rows = []
    for run in study.children:
        base = _trial_row(study, run)
        metrics = run.data.metrics
        for phase, metric, nfe in sorted(keys):
            value = per_run[run.info.run_id].get((phase, metric, nfe), math.nan)
            n = metrics.get(f"{phase}/num_samples", math.nan)
            rows.append({**base, "metric": metric, "nfe": nfe, "value": float(value),
                         "phase": phase, "num_samples": n})
    cols = [*trials(study).columns, "metric", "nfe", "value", "phase", "num_samples"]
    return pd.DataFrame(rows, columns=cols)


def history(study: StudyRuns, include_loss: bool = True) -> pd.DataFrame:
    """Metric versus training step from the `eval/{metric}/nfe_{k}` (and `train/loss`) histories.

    Columns: run_id, trial_id, status, seed, <axes...>, key, metric, nfe, step, value.
    `train/loss` rows have metric "loss" and nfe NaN.
    """
    rows = []
    for run in study.children:
        base = _trial_row(study, run)
        base.pop("error")
        base.pop("train_s")
        for key in sorted(run.data.metrics):
            m = METRIC_KEY.match(key)
            if m and m.group(1) == "eval":
                metric, nfe = m.group(2), int(m.group(3))
            elif include_loss and key == "train/loss":
                metric, nfe = "loss", math.nan
            else:
                continue
            for point in study.client.get_metric_history(run.info.run_id, key):
                rows.append({**base, "key": key, "metric": metric, "nfe": nfe,
                             "step": point.step, "value": point.value})
    cols = ["run_id", "trial_id", "status", "seed", *study.row_axes,
            "key", "metric", "nfe", "step", "value"]
    return pd.DataFrame(rows, columns=cols)
