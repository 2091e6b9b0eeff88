"""The MLflow side of a study (schema: docs/architecture.md, "MLflow schema").

One parent run per study execution, one child run per trial. Everything is written from the driver
process only (Tune callbacks), so one study is one writer of the store (two studies on one SQLite file
are two writers: MLflow sets SQLite's busy timeout, and the store's first creation is serialised by a
file lock here). Runs are found again by tags (``mfsweep.execution_id`` on the parent,
``mfsweep.trial_id`` on a child), so a resumed study reuses its runs instead of duplicating them, and
replayed steps are not re-logged.

When the tracking store cannot be reached mid-study (server down, network gone, SQLite locked past
its timeout) nothing is lost and the trials keep running: every write from then on becomes a record
in a journal, kept in memory and in ``<storage>/<study>/mlflow_pending/journal.json`` (the trials'
final artifacts copied next to it); metrics waiting in the driver's few-second send buffer are also
appended to ``<storage>/<study>/mlflow_buffer.jsonl`` until sent, so a killed driver loses none, and the journal is replayed in order when the store answers
again (tried at most every ``RETRY_S`` seconds) or by the next ``mfsweep run`` of the study. Replays
are idempotent: metrics carry their original timestamps (MLflow drops an identical (key, value,
timestamp, step) row), runs are found again by tags, and status changes are absolute.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

import mfsweep
from mfsweep.config import ConfigError, dump_yaml, flatten
from mfsweep.schema import quote
from mfsweep.sweep.plan import StudyPlan, TrialSpec

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_TAG = 5000
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "stopped": "KILLED"}
#: MLflow 3's experiment type tag and its value for model training ("Machine learning", as opposed
#: to ``genai_development``), the value the UI's own experiment type selector writes.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
#: MLflow's HTTP client retries (defaults: 7 retries with backoff, 120 s timeout: minutes per call
#: against a dead server). In the driver a call gives up within seconds; the journal keeps the write.
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
RETRY_S = 10.0  # while the store is unreachable, try the journal again at most this often
PENDING_DIR, JOURNAL, BUFFER = "mlflow_pending", "journal.json", "mlflow_buffer.jsonl"


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


class TrackingUnreachable(ConfigError):
    """The tracking store does not answer at start (exit 2, one line, before Ray or any training)."""

    def __init__(self, uri: str, reason: str):
        self.errors, self.source, self.uri = [("tracking.uri", reason)], "tracking", uri
        ValueError.__init__(self, f"MLflow tracking server at {uri} is unreachable ({reason}): start it, or pass "
                                  "--tracking-uri (or tracking.uri in the study) with one that answers")


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Cheap reachability probe of an HTTP(S) tracking server: GET <uri>/health within ``timeout``
    seconds. Any HTTP answer counts as reachable (authentication errors are MLflow's to report);
    refused or timed-out connections raise TrackingUnreachable. Other URIs (sqlite, files,
    databricks) are not probed."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(uri, str(reason) or type(exc).__name__) from None


def _transient(exc: BaseException) -> bool:
    """Is this the store being unreachable (retry later), rather than a request it refused?"""
    import requests

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                          TimeoutError)):
            return True
        text = str(e)
        if any(s in text for s in ("Max retries exceeded", "Connection refused", "database is locked",
                                   "Connection aborted", "Read timed out", "TEMPORARILY_UNAVAILABLE")):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def _store_init_lock(uri: str):
    """Serialise the first use of a SQLite store between processes: MLflow creates a fresh
    database's tables without a lock, so two studies starting at once on a new file can collide."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import hashlib

    db = Path(uri[len("sqlite:///"):].split("?")[0]).resolve()
    digest = hashlib.md5(str(db).encode(), usedforsecurity=False).hexdigest()[:16]
    fd = os.open(os.path.join(tempfile.gettempdir(), f"mfsweep-store-init-{digest}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pending_dir(plan: StudyPlan) -> Path:
    """``<storage>/<study>/mlflow_pending``; storage given as a URI keeps it locally in
    ``./.mfsweep/<study>/mlflow_pending`` (the journal is written by the driver only)."""
    path = plan.study.storage.path
    base = Path(".mfsweep").resolve() if "://" in path else Path(path).expanduser().resolve()
    return base / plan.study.name / PENDING_DIR


class StudyTracker:
    """Parent and child runs of one study execution; writes that fail because the store is
    unreachable go to a journal (see the module docstring)."""

    def __init__(self, tracking_uri: str, plan: StudyPlan):
        self.uri, self.plan = tracking_uri, plan
        if tracking_uri.startswith(("http://", "https://")):
            for key, value in HTTP_RETRY_ENV.items():
                os.environ.setdefault(key, value)
        with _store_init_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(plan.study.experiment)
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}  # trial key (parent/trial id) → run id
        self._trials: dict[str, dict] = {}  # trial key → what creating its run needs (tags, params)
        self._last_step: dict[tuple[str, str], int] = {}  # (run id, metric group) → last logged step
        self._done: set[str] = set()  # run ids whose final outputs are logged
        self._resumed: set[str] = set()  # run ids tagged mfsweep.resumed_from in this process
        self._buffer: dict[str, list[Metric]] = {}  # trial key → metrics not yet sent
        self._last_flush = time.monotonic()
        self.pending_dir = _pending_dir(plan)
        self._journal: list[dict] = []  # writes not yet in the store, in order
        self._next_try = 0.0
        self._told = False
        self._load_journal()

    # ---- journal --------------------------------------------------------------------------------
    @property
    def journal_file(self) -> Path:
        return self.pending_dir / JOURNAL

    @property
    def buffer_file(self) -> Path:
        """Metrics buffered in memory (sent every few seconds), also appended here until sent, so a
        driver killed with a full buffer (SIGKILL) loses nothing: the next run logs them."""
        return self.pending_dir.parent / BUFFER

    @property
    def offline(self) -> bool:
        """True while some writes wait in the journal."""
        return bool(self._journal)

    def _load_journal(self) -> None:
        """A journal left by an earlier `mfsweep run` of this study is replayed now (same store only)."""
        state = json.loads(self.journal_file.read_text()) if self.journal_file.is_file() else {"uri": self.uri}
        lines = []
        if self.buffer_file.is_file():  # the last line may be cut short by a kill mid-write
            for line in self.buffer_file.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        uris = {state.get("uri")} | {rec.get("uri") for rec in lines}
        if uris != {self.uri}:
            self._say(f"warning: {self.pending_dir} holds records for MLflow at {sorted(map(str, uris))}, not "
                      f"{self.uri}: left as is (rerun with that --tracking-uri to log them)")
            return
        self._trials.update(state.get("trials", {}))
        self._journal = [{"op": "metrics", "run": rec["run"], "metrics": rec["metrics"]} for rec in lines]
        self._journal += list(state.get("events", []))
        if not self._journal:
            return
        kept = " and ".join(str(p) for p, there in ((self.journal_file, self.journal_file.is_file()),
                                                    (self.buffer_file, bool(lines))) if there)
        self._save_journal()
        self.buffer_file.unlink(missing_ok=True)  # now in the journal
        n = len(self._journal)
        if self._drain(force=True, quiet=True):
            self._say(f"logged {n} MLflow record(s) that an earlier run of this study kept in {kept}")

    def _save_journal(self) -> None:
        if not self._journal:
            self.journal_file.unlink(missing_ok=True)
            shutil.rmtree(self.pending_dir / "files", ignore_errors=True)
            with contextlib.suppress(OSError):
                self.pending_dir.rmdir()
            return
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        used = {e["trial"] for e in self._journal if "trial" in e}
        state = {"uri": self.uri, "trials": {k: v for k, v in self._trials.items() if k in used},
                 "events": self._journal}
        tmp = self.journal_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.journal_file)

    def _keep(self, events: list[dict], exc: BaseException | None = None, front: bool = False) -> None:
        """Journal ``events`` (their files copied into the pending folder) and tell the user once."""
        for ev in events:
            self._copy_files(ev)
        self._journal = events + self._journal if front else self._journal + events
        if exc is not None:  # a failed call now: the next try waits a little
            self._next_try = time.monotonic() + RETRY_S
        self._save_journal()
        if not self._told:
            self._told = True
            why = str(exc).splitlines()[0][:200] if exc is not None else "unreachable"
            self._say(f"warning: MLflow at {self.uri} unreachable ({why}); {self.pending_note()}")

    def pending_note(self) -> str:
        batches = sum(e["op"] in ("metrics", "result") for e in self._journal)
        return (f"{len(self._journal)} record(s) ({batches} metric batches) kept in {self.journal_file}; "
                "they will be logged when it is back, or on rerun of the same command")

    def _copy_files(self, ev: dict) -> None:
        if not ev.get("files") or ev.get("copied"):
            return
        dest = self.pending_dir / "files" / f"{len(self._journal)}-{time.monotonic_ns()}"
        files = []
        for src, sub in ev["files"]:
            target = dest / (sub or "") / Path(src).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            files.append([str(target), sub])
        ev["files"], ev["copied"] = files, True

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _drain(self, force: bool = False, quiet: bool = False) -> bool:
        """Replay the journal in order; True when it is empty afterwards."""
        if not self._journal:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self._journal:
            ev = self._journal[0]
            try:
                self._apply(ev, replay=True)
            except Exception as exc:
                if _transient(exc):
                    self._next_try = time.monotonic() + RETRY_S
                    self._save_journal()
                    return False
                self._say(f"warning: MLflow refused a kept {ev['op']} record ({str(exc).splitlines()[0][:200]}); "
                          "dropped")
            # by identity: a failed flush inside _apply may have put metric records in front of it
            self._journal = [e for e in self._journal if e is not ev]
        self._save_journal()
        self._told = False
        if not quiet:
            self._say(f"MLflow at {self.uri} is back: kept records logged")
        return True

    def _submit(self, ev: dict) -> None:
        """Apply ``ev`` now, or journal it (after earlier journaled writes, or when the store is down)."""
        if self._journal:
            self._keep([ev])
            self._drain()
            return
        try:
            self._apply(ev)
        except Exception as exc:
            if not _transient(exc):
                raise
            self._keep([ev], exc)

    def _apply(self, ev: dict, replay: bool = False) -> None:
        op = ev["op"]
        if op == "started":
            rid = self._child(ev["trial"])
            if rid not in self._done:
                self.client.update_run(rid, status="RUNNING")
                self.client.set_tag(rid, "mfsweep.status", "running")
        elif op == "result":
            self._result(ev)
        elif op == "metrics":
            rid = ev["run"] if "run" in ev else self._child(ev["trial"])
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in ev["metrics"]]
            for group in ("train", "eval"):
                steps = [m.step for m in metrics if m.key.startswith(group + "/")]
                if steps:
                    key = (rid, group)
                    self._last_step[key] = max(self._last_step.get(key, -1), *steps)
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(rid, metrics=metrics[i:i + 1000])
        elif op == "complete":
            self._complete(ev, replay)
        elif op == "failed":
            rid = self._child(ev["trial"])
            self.flush()
            self.client.log_batch(rid, tags=[RunTag("mfsweep.status", "failed"),
                                             RunTag("mfsweep.error", ev["error"][:MAX_TAG])])
            if ev["trace"]:
                self._log_texts(rid, {"error.txt": ev["trace"]})
            self.client.set_terminated(rid, "FAILED")
            self._done.discard(rid)
        elif op == "stop_unfinished":
            self.flush()
            for run in self._child_runs(ev["parent"]):
                if run.data.tags.get("mfsweep.status") == "running":
                    self.client.set_tag(run.info.run_id, "mfsweep.status", "stopped")
                    self.client.set_terminated(run.info.run_id, "KILLED")
        elif op == "close":
            if ev["csv"] is not None:
                self._log_texts(ev["parent"], {"trials.csv": ev["csv"]})
            self.client.set_terminated(ev["parent"], ev["status"])
        else:
            raise ValueError(f"unknown journal record {op!r}")

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
        """Close the parent run; when writes are still kept (store unreachable), say where."""
        self._submit({"op": "close", "parent": self.parent_id, "status": status,
                      "csv": trials_csv(rows) if rows else None})
        if self._journal and not self._drain(force=True):
            self._say(f"warning: MLflow at {self.uri} unreachable; {self.pending_note()}")

    def _log_texts(self, run_id: str, files: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
                self.client.log_artifact(run_id, str(Path(tmp) / name))

    # ---- children -------------------------------------------------------------------------------
    def _key(self, spec: TrialSpec) -> str:
        """The trial's key (parent run / trial id); remembers what creating its run needs."""
        key = f"{self.parent_id}/{spec.trial_id}"
        if key not in self._trials:
            self._trials[key] = {"parent": self.parent_id, "trial_id": spec.trial_id, "tags": dict(spec.tags),
                                 "params": {k: str(v)[:6000] for k, v in flatten(spec.config).items()}}
            self._trials[key]["params"]["resources.workers"] = str(self.plan.study.resources.workers)  # world size
        return key

    def child(self, spec: TrialSpec) -> str:
        """The trial's run: cached, found by tag (resume) or created with params and axis tags."""
        return self._child(self._key(spec))

    def _child(self, key: str) -> str:
        if key in self._children:
            return self._children[key]
        rec = self._trials[key]
        parent, trial_id = rec["parent"], rec["trial_id"]
        found = self._search(f"tags.`mlflow.parentRunId` = '{parent}' and "
                             f"tags.`mfsweep.trial_id` = '{quote(trial_id)}'")
        if found:
            run = found[0]
            rid = run.info.run_id
            if run.data.tags.get("mfsweep.status") == "finished":
                self._done.add(rid)
            elif "mfsweep.error" in run.data.tags:  # a failed trial that is being retried
                self.client.delete_tag(rid, "mfsweep.error")
            for group, mkey in (("train", "train/loss"), ("eval", "eval/num_samples")):
                history = self.client.get_metric_history(rid, mkey) if mkey in run.data.metrics else []
                last = max((m.step for m in history), default=-1)
                self._last_step[(rid, group)] = max(last, self._last_step.get((rid, group), -1))
        else:
            tags = {"mlflow.parentRunId": parent, "mfsweep.role": "trial", "mfsweep.study": self.plan.study.name,
                    "mfsweep.trial_id": trial_id, "mfsweep.status": "running",
                    **{f"axis.{k}": v for k, v in rec["tags"].items()}}
            rid = self.client.create_run(self.experiment_id, tags=tags, run_name=trial_id).info.run_id
            params = [Param(k, v) for k, v in rec["params"].items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(rid, params=params[i:i + 100])
        self._children[key] = rid
        return rid

    def trial_started(self, spec: TrialSpec) -> None:
        self._submit({"op": "started", "trial": self._key(spec)})

    def trial_result(self, spec: TrialSpec, result: dict) -> None:
        """Buffer the result's metrics (train/*, eval/*); steps already logged are skipped. A trial
        that continued from a checkpoint is tagged ``mfsweep.resumed_from = <step>``."""
        metrics = {k: float(v) for k, v in result.items() if k.startswith(("train/", "eval/")) and _number(v)}
        resumed = int(result["resumed_from"]) if result.get("resumed_from") else None
        self._submit({"op": "result", "trial": self._key(spec), "step": int(result.get("step", 0)),
                      "ts": int(time.time() * 1000), "metrics": metrics, "resumed_from": resumed})
        if not self._journal and time.monotonic() - self._last_flush > 5.0:
            self.flush()

    def _result(self, ev: dict) -> None:
        key, step, ts = ev["trial"], ev["step"], ev["ts"]
        rid = self._child(key)
        if ev["resumed_from"] and rid not in self._resumed:
            self.client.set_tag(rid, "mfsweep.resumed_from", str(ev["resumed_from"]))
            self._resumed.add(rid)
        for group in ("train", "eval"):
            keys = [k for k in ev["metrics"] if k.startswith(group + "/")]
            if keys and step > self._last_step.get((rid, group), -1):
                self._last_step[(rid, group)] = step
                batch = [Metric(k, ev["metrics"][k], ts, step) for k in keys]
                self._buffer.setdefault(key, []).extend(batch)
                if self.buffer_file.parent.is_dir():  # the study's folder (the runner made it)
                    with open(self.buffer_file, "a") as f:
                            f.write(json.dumps({"uri": self.uri, "run": rid,
                                            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in batch]}) + "\n")

    def flush(self) -> None:
        """Send the buffered metrics; what cannot be sent goes to the front of the journal."""
        while self._buffer:
            key = next(iter(self._buffer))
            metrics = self._buffer[key]
            try:
                rid = self._child(key)
                for i in range(0, len(metrics), 1000):
                    self.client.log_batch(rid, metrics=metrics[i:i + 1000])
            except Exception as exc:
                if not _transient(exc):
                    raise
                kept = [{"op": "metrics", "trial": k, "metrics": [[m.key, m.value, m.timestamp, m.step] for m in ms]}
                        for k, ms in self._buffer.items()]
                self._buffer.clear()
                self._keep(kept, exc, front=True)
                break
            del self._buffer[key]
        self._last_flush = time.monotonic()
        self.buffer_file.unlink(missing_ok=True)  # all sent, or in the journal now

    def trial_complete(self, spec: TrialSpec, result: dict, outputs: Path | None, status: str, error: str = "") -> None:
        """Final metrics, metric tags, artifacts (from ``outputs``), status tags, run status."""
        step, ts = int(result.get("step", 0)), int(time.time() * 1000)
        metrics = [[k, float(v), ts, step] for k, v in result.items()
                   if k.startswith(("final/", "time/")) and _number(v)]
        tags = [[t.key, t.value] for t in self._metric_tags(result, outputs)]
        if error:
            tags.append(["mfsweep.error", error[:MAX_TAG]])
        files = []
        if outputs is not None:
            files += [[str(outputs / n), None] for n in ("config.yaml", "metrics.json") if (outputs / n).is_file()]
            if (outputs / "samples").is_dir():
                files += [[str(p), str(p.parent.relative_to(outputs))]
                          for p in sorted((outputs / "samples").rglob("*")) if p.is_file()]
        self._submit({"op": "complete", "trial": self._key(spec), "metrics": metrics, "tags": tags,
                      "files": files, "status": status})

    def _complete(self, ev: dict, replay: bool) -> None:
        rid = self._child(ev["trial"])
        self.flush()
        if rid in self._done and not replay:
            return
        status = ev["status"]
        self.client.log_batch(rid, metrics=[Metric(k, v, ts, step) for k, v, ts, step in ev["metrics"]],
                              tags=[RunTag(k, v) for k, v in ev["tags"]])
        for path, sub in ev["files"]:
            self.client.log_artifact(rid, path, sub)
        self.client.set_terminated(rid, MLFLOW_STATUS.get(status, "FINISHED"))
        self.client.set_tag(rid, "mfsweep.status", status)  # last: a resume skips runs tagged finished
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
        self._submit({"op": "failed", "trial": self._key(spec), "error": error, "trace": trace})

    def mark_unfinished_stopped(self) -> None:
        """After an interruption: children still running become KILLED / stopped (resume reopens them)."""
        self.flush()
        self._submit({"op": "stop_unfinished", "parent": self.parent_id})

    def _child_runs(self, parent: str) -> list:
        return self._search(f"tags.`mlflow.parentRunId` = '{parent}'")

    def children(self) -> list | None:
        """This execution's child runs; None when the store cannot be reached (or writes wait in
        the journal, so what it holds is not yet the whole story)."""
        if self._journal and not self._drain(force=True):
            return None
        try:
            return self._child_runs(self.parent_id)
        except Exception as exc:
            if not _transient(exc):
                raise
            return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
