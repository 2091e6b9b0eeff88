"""Run a study plan: start (or join) Ray, open the MLflow parent run, run or resume the Tune
experiment, and return what happened to every trial.

Storage layout (``storage.path``, default ./runs/ray)::

    <storage>/<study>/execution.json      which execution a rerun resumes (id, study fingerprint)
    <storage>/<study>/<execution id>/     the Ray Tune experiment (trial folders, checkpoints)

A rerun of the same study resumes the execution named in execution.json; ``--restart`` starts a new
one (new parent run, fresh Ray experiment; the old folders are kept).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mfsweep.config import ConfigError
from mfsweep.sweep.plan import StudyPlan
from mfsweep.sweep.tracking import StudyTracker, check_tracking

#: Tune's own console output off (mfsweep prints one line per trial event instead).
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
TERMINAL = ("finished", "failed", "diverged", "stopped")


@dataclass
class RunOutcome:
    execution_id: str
    parent_run_id: str
    tracking_uri: str
    experiment_path: str
    resumed: bool
    interrupted: bool
    wall_s: float
    slots: int
    rows: list[dict] = field(default_factory=list)  # one per trial: trial_id, status, error, metric, time
    stop_signal: str = ""  # "SIGTERM" when that stopped the study (SIGINT / Ctrl+C: "")
    # the driver's view of Tuner.fit (mfsweep.sweep.timeline): trial → [start, end] s after fit began,
    # and seconds the driver spent in each of mfsweep's Tune callbacks
    trial_spans: dict = field(default_factory=dict)
    callback_s: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in ("failed", "diverged")]


# ---- storage ---------------------------------------------------------------------------------------
def storage_root(path: str) -> str:
    """Absolute local path, or the URI as given (s3://, gs://, ...)."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _fs(path: str):
    from pyarrow import fs

    if "://" in path:
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), path


def read_execution(study_dir: str) -> dict | None:
    filesystem, root = _fs(study_dir)
    target = f"{root}/execution.json"
    if filesystem.get_file_info(target).type.name == "NotFound":
        return None
    with filesystem.open_input_stream(target) as f:
        return json.loads(f.read().decode())


#: The form of an execution id (``time.strftime("%Y%m%d-%H%M%S-") + 6 hex``): an id read back from
#: execution.json must have it, so a hand-edited id cannot point Tune's restore outside the storage path.
EXECUTION_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def checked_execution(state: dict | None, where: str) -> dict | None:
    """``state`` from execution.json, refused (exit 2) unless its execution id has the generated form."""
    if state is None:
        return None
    eid = state.get("execution_id")
    if not isinstance(eid, str) or not EXECUTION_ID.match(eid):
        raise ConfigError([("execution_id", f"{eid!r} in {where}/execution.json is not an id mfsweep wrote "
                                            "(YYYYMMDD-HHMMSS-xxxxxx); rerun with --restart for a new execution")],
                          "storage")
    return state


def write_execution(study_dir: str, state: dict) -> None:
    filesystem, root = _fs(study_dir)
    filesystem.create_dir(root, recursive=True)
    with filesystem.open_output_stream(f"{root}/execution.json") as f:
        f.write(json.dumps(state, indent=2).encode())


def check_storage(storage: str, shared: bool, address: str | None, tracking_uri: str, nodes: int) -> None:
    """On a multi-node cluster every node must see the storage path (and Ray Client runs Tune on
    the head node, so a local SQLite tracking store would live there)."""
    errors = []
    local = "://" not in storage
    if address and address.startswith("ray://"):
        if local and not shared:
            errors.append(("storage.path", f"{storage!r} is a local path but Ray Client ({address}) runs Tune on the "
                                           "cluster: use a URI (s3://, gs://) or a shared mount with storage.shared: true"))
        if not tracking_uri.startswith(("http://", "https://", "databricks")):
            errors.append(("tracking.uri", f"with Ray Client use a tracking server (http://...), not {tracking_uri}"))
    elif nodes > 1 and local and not shared:
        errors.append(("storage.path", f"{storage!r} is a local path but the Ray cluster has {nodes} nodes: use a "
                                       "URI (s3://, gs://) or a path every node mounts and set storage.shared: true "
                                       "(see docs/cluster.md)"))
    if errors:
        raise ConfigError(errors, "storage")


# ---- Ray -------------------------------------------------------------------------------------------
def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join ``address`` or start a quiet local Ray. Returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local": a new Ray of our own even when `ray start` left a cluster address in /tmp/ray
        # (ray.init() would join that one and refuse num_cpus)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **quiet)
    return True


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _slots(plan: StudyPlan, max_concurrent: int | None) -> int:
    import ray

    res = plan.study.resources
    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // (res.cpu * res.workers))  # per trial: per worker × workers
    if res.gpu:
        fit = min(fit, int(total.get("GPU", 0) // (res.gpu * res.workers)))
    limit = max_concurrent or plan.study.max_concurrent_trials
    n = len(plan.trials) or plan.study.search.num_samples
    return max(1, min(fit, limit or fit, n))


# ---- the run ---------------------------------------------------------------------------------------
def run_plan(plan: StudyPlan, study_text: str, *, tracking_uri: str, address: str | None = None,
             max_concurrent: int | None = None, restart: bool = False, num_cpus: int | None = None,
             resolved_yaml: str | None = None, console=None) -> RunOutcome:
    """Run (or resume) the study; trial failures are recorded, not raised."""
    from mfsweep.sweep.events import StudyEvents, attach, detach, forwarding_callback
    from mfsweep.sweep.tune import make_tuner, restore_tuner

    study = plan.study
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    storage = storage_root(study.storage.path)
    study_dir = f"{storage}/{study.name}"
    check_tracking(tracking_uri)  # a dead tracking server: exit 2 before Ray, storage or training
    from mfsweep.sweep.lock import acquire

    lock = acquire(study_dir, study.name)  # one driver per study; freed on exit, however it dies
    started = False
    try:
        # a changed study is refused before Ray starts (the refusal costs nothing)
        fingerprint = plan.fingerprint()
        state = None if restart else checked_execution(read_execution(study_dir), study_dir)
        if state and state.get("fingerprint") != fingerprint:
            raise ConfigError([("", f"the study changed since execution {state['execution_id']} in {study_dir}; "
                                    "rerun with --restart to start a new execution")], f"study {study.name}")
        started = init_ray(address, num_cpus)
        check_storage(storage, study.storage.shared, address, tracking_uri, _alive_nodes())
        resumed = state is not None
        execution_id = state["execution_id"] if state else time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        tracker = StudyTracker(tracking_uri, plan)
        parent_id, _ = tracker.open_parent(execution_id, study_text, resolved_yaml)
        write_execution(study_dir, {"execution_id": execution_id, "fingerprint": fingerprint, "study": study.name,
                                    "parent_run_id": parent_id, "tracking_uri": tracking_uri,
                                    "created": (state or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S"))})
        from mfsweep.sweep.progress import ProgressDisplay, StudyProgress

        expected = len(plan.trials) or study.search.num_samples
        progress = StudyProgress(expected, plan.metric, study.search.mode)
        events = StudyEvents(plan, tracker, console, progress)
        if resumed:  # trials that ended in an earlier run of this execution
            for row in events.rows():
                progress.already_done(row["trial_id"], row["status"], row.get(f"final/{plan.metric}"))
        attach(events)
        exp_path = f"{study_dir}/{execution_id}"
        from ray import tune

        if resumed and tune.Tuner.can_restore(exp_path):
            tuner = restore_tuner(plan, exp_path)
        else:
            tuner = make_tuner(plan, study_dir, execution_id, [forwarding_callback()], max_concurrent)
        slots = _slots(plan, max_concurrent)
        from mfsweep.sweep.timeline import SlotTimeline

        events.timeline = SlotTimeline()
        t0 = events.timeline.t0
        interrupted = False
        from mfsweep.sweep.signals import graceful_stop

        try:  # SIGINT: Tune's own graceful stop; SIGTERM: the same (mfsweep.sweep.signals)
            with graceful_stop() as stop, ProgressDisplay(progress, console) as events.display:
                tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            tracker.close_parent("FAILED", [])
            raise
        wall = time.perf_counter() - t0
        tracker.flush()
        rows = events.rows()
        interrupted = interrupted or sum(r["status"] in TERMINAL for r in rows) < expected
        if interrupted:
            tracker.mark_unfinished_stopped()
            rows = events.rows()
        tracker.close_parent("KILLED" if interrupted else "FINISHED", rows)
        # MLflow unreachable: its writes are journaled for the rerun (tracking.py), so not done yet
        interrupted = interrupted or getattr(tracker, "offline", False)
        return RunOutcome(execution_id, parent_id, tracking_uri, exp_path, resumed, interrupted, wall, slots, rows,
                          stop_signal=stop.name, trial_spans=events.timeline.spans,
                          callback_s=events.timeline.callback_s)
    finally:
        detach()
        if started:
            import ray

            ray.shutdown()
        lock.release()
