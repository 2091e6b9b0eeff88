"""The MLflow side of a study (schema: docs/architecture.md, "MLflow schema").

One parent run per study execution, one child run per trial. Everything is written from the driver
process only (Tune callbacks), so the default SQLite store never sees concurrent writers. Runs are
found again by tags (``mfsweep.execution_id`` on the parent, ``mfsweep.trial_id`` on a child), so
a resumed study reuses its runs instead of duplicating them, and replayed steps are not re-logged.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

import mfsweep
from mfsweep.config import dump_yaml, flatten
from mfsweep.schema import quote
from mfsweep.sweep.plan import StudyPlan, TrialSpec

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_TAG = 5000
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "stopped": "KILLED"}
#: MLflow 3's experiment type tag and its value for model training ("Machine learning", as opposed
#: to ``genai_development``), the value the UI's own experiment type selector writes.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def resolve_tracking_uri(flag: str | None, study_uri: str | None) -> str:
    """--tracking-uri > $MLFLOW_TRACKING_URI > the study's tracking.uri > sqlite:///mlflow.db (cwd).
    A relative SQLite path is made absolute, so Ray's working directories do not move it."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or study_uri or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    elif "://" not in uri:  # a plain folder: the file store
        uri = Path(uri).expanduser().resolve().as_uri()
    return uri


def git_commit() -> str:
    """The commit of the mfsweep checkout (``+dirty`` with local changes), or ``unknown``."""
    here = Path(mfsweep.__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def trials_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class StudyTracker:
    """Parent and child runs of one study execution."""

    def __init__(self, tracking_uri: str, plan: StudyPlan):
        self.uri, self.plan = tracking_uri, plan
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(plan.study.experiment)
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}  # trial id → run id
        self._last_step: dict[tuple[str, str], int] = {}  # (run id, metric group) → last logged step
        self._done: set[str] = set()  # run ids whose final outputs are logged
        self._resumed: set[str] = set()  # run ids tagged mfsweep.resumed_from in this process
        self._buffer: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()

    def _experiment(self, name: str) -> str:
        """The study's experiment, created (or restored) on first use and marked as a model-training
        experiment (``mlflow.experimentKind``) unless it already has a kind, e.g. one set in the UI."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if not exp.tags.get(EXPERIMENT_KIND_TAG):
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts next to the database, not in the cwd
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})

    def _search(self, filt: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filt, ViewType.ACTIVE_ONLY, 1000,
                                            ["attributes.start_time DESC"]))

    # ---- parent ---------------------------------------------------------------------------------
    def open_parent(self, execution_id: str, study_text: str, resolved_yaml: str | None) -> tuple[str, bool]:
        """Find this execution's parent run (resume) or create it. Returns (run id, reused)."""
        study = self.plan.study
        found = self._search(f"tags.`mfsweep.role` = 'study' and tags.`mfsweep.study` = '{quote(study.name)}' "
                             f"and tags.`mfsweep.execution_id` = '{quote(execution_id)}'")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id, True
        tags = {"mfsweep.role": "study", "mfsweep.study": study.name, "mfsweep.version": mfsweep.__version__,
                "mfsweep.git_commit": git_commit(), "mfsweep.axes": json.dumps(self.plan.axis_keys),
                "mfsweep.description": study.description[:MAX_TAG], "mfsweep.execution_id": execution_id,
                "mfsweep.search": study.search.algorithm, "mfsweep.metric": self.plan.metric or ""}
        if study.paper_table:
            tags["mfsweep.paper_table"] = study.paper_table
        if self.plan.baseline:
            tags["mfsweep.baseline"] = json.dumps(self.plan.baseline)
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=study.name)
        self.parent_id = run.info.run_id
        files = {"study.yaml": study_text, "base_config.yaml": dump_yaml(self.plan.base_config),
                 "trials.csv": trials_csv(self.planned_rows())}
        if resolved_yaml is not None:
            files["study_resolved.yaml"] = resolved_yaml
        self._log_texts(self.parent_id, files)
        return self.parent_id, False

    def planned_rows(self) -> list[dict]:
        return [{"trial_id": t.trial_id, **{f"axis.{k}": v for k, v in t.tags.items()}} for t in self.plan.trials]

    def close_parent(self, status: str, rows: list[dict]) -> None:
        if rows:
            self._log_texts(self.parent_id, {"trials.csv": trials_csv(rows)})
        self.client.set_terminated(self.parent_id, status)

    def _log_texts(self, run_id: str, files: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
                self.client.log_artifact(run_id, str(Path(tmp) / name))

    # ---- children -------------------------------------------------------------------------------
    def child(self, spec: TrialSpec) -> str:
        """The trial's run: cached, found by tag (resume) or created with params and axis tags."""
        if spec.trial_id in self._children:
            return self._children[spec.trial_id]
        found = self._search(f"tags.`mlflow.parentRunId` = '{self.parent_id}' and "
                             f"tags.`mfsweep.trial_id` = '{quote(spec.trial_id)}'")
        if found:
            run = found[0]
            rid = run.info.run_id
            if run.data.tags.get("mfsweep.status") == "finished":
                self._done.add(rid)
            elif "mfsweep.error" in run.data.tags:  # a failed trial that is being retried
                self.client.delete_tag(rid, "mfsweep.error")
            for group, key in (("train", "train/loss"), ("eval", "eval/num_samples")):
                history = self.client.get_metric_history(rid, key) if key in run.data.metrics else []
                self._last_step[(rid, group)] = max((m.step for m in history), default=-1)
        else:
            tags = {"mlflow.parentRunId": self.parent_id, "mfsweep.role": "trial", "mfsweep.study": self.plan.study.name,
                    "mfsweep.trial_id": spec.trial_id, "mfsweep.status": "running",
                    **{f"axis.{k}": v for k, v in spec.tags.items()}}
            rid = self.client.create_run(self.experiment_id, tags=tags, run_name=spec.trial_id).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(spec.config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(rid, params=params[i:i + 100])
        self._children[spec.trial_id] = rid
        return rid

    def trial_started(self, spec: TrialSpec) -> None:
        rid = self.child(spec)
        if rid not in self._done:
            self.client.update_run(rid, status="RUNNING")
            self.client.set_tag(rid, "mfsweep.status", "running")

    def trial_result(self, spec: TrialSpec, result: dict) -> None:
        """Buffer the result's metrics (train/*, eval/*); steps already logged are skipped. A trial
        that continued from a checkpoint is tagged ``mfsweep.resumed_from = <step>``."""
        rid = self.child(spec)
        step, ts = int(result.get("step", 0)), int(time.time() * 1000)
        if result.get("resumed_from") and rid not in self._resumed:
            self._resumed.add(rid)
            self.client.set_tag(rid, "mfsweep.resumed_from", str(int(result["resumed_from"])))
        for group in ("train", "eval"):
            keys = [k for k in result if k.startswith(group + "/") and _number(result[k])]
            if keys and step > self._last_step.get((rid, group), -1):
                self._last_step[(rid, group)] = step
                self._buffer.setdefault(rid, []).extend(Metric(k, float(result[k]), ts, step) for k in keys)
        if time.monotonic() - self._last_flush > 5.0:
            self.flush()

    def flush(self) -> None:
        for rid, metrics in self._buffer.items():
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(rid, metrics=metrics[i:i + 1000])
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def trial_complete(self, spec: TrialSpec, result: dict, outputs: Path | None, status: str, error: str = "") -> None:
        """Final metrics, metric tags, artifacts (from ``outputs``), status tags, run status."""
        rid = self.child(spec)
        self.flush()
        if rid in self._done:
            return
        step, ts = int(result.get("step", 0)), int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if k.startswith(("final/", "time/")) and _number(v)]
        tags = [RunTag("mfsweep.status", status)]
        if error:
            tags.append(RunTag("mfsweep.error", error[:MAX_TAG]))
        tags += self._metric_tags(result, outputs)
        self.client.log_batch(rid, metrics=metrics, tags=tags)
        if outputs is not None:
            for name in ("config.yaml", "metrics.json"):
                if (outputs / name).is_file():
                    self.client.log_artifact(rid, str(outputs / name))
            if (outputs / "samples").is_dir():
                self.client.log_artifacts(rid, str(outputs / "samples"), "samples")
        self.client.set_terminated(rid, MLFLOW_STATUS.get(status, "FINISHED"))
        if status == "finished":
            self._done.add(rid)

    def _metric_tags(self, result: dict, outputs: Path | None = None) -> list[RunTag]:
        """metric.<name>.{extractor,resize,num_samples}; the trial's metrics.json has the exact
        extractor id (with the weights' hash), the registry's static name is the fallback."""
        from mfsweep.evaluation.metrics import METRICS

        names = {k.split("/")[1] for k in result if k.startswith("final/") and k.count("/") == 2}
        n = result.get("final/num_samples")
        meta: dict = {}
        if outputs is not None and (outputs / "metrics.json").is_file():
            meta = json.loads((outputs / "metrics.json").read_text()).get("metric_metadata") or {}
        tags = []
        for name in sorted(names & set(METRICS)):
            spec, m = METRICS[name], meta.get(name, {})
            tags += [RunTag(f"metric.{name}.extractor", str(m.get("extractor", spec.extractor))),
                     RunTag(f"metric.{name}.resize", str(m.get("resize", spec.resize)))]
            if n is not None:
                tags.append(RunTag(f"metric.{name}.num_samples", str(int(n))))
        return tags

    def trial_failed(self, spec: TrialSpec, error: str, trace: str = "") -> None:
        rid = self.child(spec)
        self.flush()
        self.client.log_batch(rid, tags=[RunTag("mfsweep.status", "failed"), RunTag("mfsweep.error", error[:MAX_TAG])])
        if trace:
            self._log_texts(rid, {"error.txt": trace})
        self.client.set_terminated(rid, "FAILED")
        self._done.discard(rid)

    def mark_unfinished_stopped(self) -> None:
        """After an interruption: children still running become KILLED / stopped (resume reopens them)."""
        self.flush()
        for run in self.children():
            if run.data.tags.get("mfsweep.status") == "running":
                self.client.set_tag(run.info.run_id, "mfsweep.status", "stopped")
                self.client.set_terminated(run.info.run_id, "KILLED")

    def children(self) -> list:
        return self._search(f"tags.`mlflow.parentRunId` = '{self.parent_id}'")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
