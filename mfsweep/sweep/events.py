"""Tune trial events on the driver → MLflow (``StudyTracker``) and a one-line console log.

Tune pickles its callbacks with the experiment, and ``Tuner.restore`` brings back those copies.
The callback is therefore a stateless forwarder to the live ``StudyEvents`` of this process
(set by the runner with ``attach`` / ``detach``), so a resumed study logs through fresh MLflow clients.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from ray.tune import Callback

from mfsweep.sweep.plan import StudyPlan, TrialSpec
from mfsweep.sweep.tracking import StudyTracker
from mfsweep.sweep.tune import trial_of


_LIVE: dict[str, StudyEvents] = {}  # the live event handler, looked up by the (pickled) Tune callback


def attach(events: StudyEvents) -> None:
    """Make ``events`` the handler that every ForwardingCallback of this process forwards to."""
    _LIVE["events"] = events
    _tune_controller_log().addFilter(_quiet_trial_trace)


def detach() -> None:
    _LIVE.pop("events", None)
    _tune_controller_log().removeFilter(_quiet_trial_trace)


def _tune_controller_log():
    import logging

    return logging.getLogger("ray.tune.execution.tune_controller")


def _quiet_trial_trace(record) -> bool:
    """Drop Tune's "Trial task failed" log record (a full Ray traceback on the console): the
    callbacks print one line per failure or retry and the trace stays in the trial's error file."""
    return not str(record.msg).startswith("Trial task failed for trial")


#: How Ray describes an actor whose node went away (the raylet died, the node was removed or drained).
NODE_LOST = re.compile(r"node (?:has |was )?(?:died|dead|removed|drained|preempted)|raylet (?:has )?died|"
                       r"NodeDiedError|LocalRayletDiedError|node_death", re.IGNORECASE)


def error_summary(trace: str) -> str:
    """The last ``SomeError: message`` line of a Ray error trace (or its last line)."""
    lines = [ln.strip() for ln in (trace or "").splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else "unknown error"


class StudyEvents:
    """What to do when a trial starts, reports, completes or fails."""

    def __init__(self, plan: StudyPlan, tracker: StudyTracker, console=None, progress=None):
        self.plan, self.tracker, self.console = plan, tracker, console
        self._specs: dict[str, TrialSpec] = {}
        self.progress = progress  # mfsweep.sweep.progress.StudyProgress (or None)
        self.display = None  # its ProgressDisplay while the study runs
        self.timeline = None  # mfsweep.sweep.timeline.SlotTimeline while Tuner.fit runs

    def _progress(self, ended: bool) -> None:
        if self.display is not None:
            self.display.update(ended)

    def spec(self, trial) -> TrialSpec:
        name = str(trial)
        if name not in self._specs:
            self._specs[name] = trial_of(self.plan, trial.config, name)
        return self._specs[name]

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def on_trial_start(self, trial) -> None:
        spec = self.spec(trial)
        self.tracker.trial_started(spec)
        self._say(f"[dim]started[/]  {spec.trial_id}")
        if self.progress is not None:
            self.progress.started(spec.trial_id)
            self._progress(ended=False)

    def on_trial_result(self, trial, result: dict) -> None:
        if result.get("phase") == "checkpoint":  # the step a retry would continue from
            self._checkpoint_step = {**getattr(self, "_checkpoint_step", {}), str(trial): int(result.get("step", 0))}
        self.tracker.trial_result(self.spec(trial), result)

    def on_trial_recover(self, trial) -> None:
        """A failed trial that Ray retries (``max_failures``): one console line, e.g. "trial t000 lost its
        node; retry 1 of 2 from step 100"; Ray's traceback stays in the trial's error file."""
        spec, trace = self.spec(trial), ""
        with contextlib.suppress(Exception):
            local = trial.error_file
            trace = Path(local).read_text() if local and Path(local).is_file() else str(trial.get_error() or "")
        trace = trace.rsplit("Failure # ", 1)[-1]  # Tune appends every failure to the file: the last one
        if NODE_LOST.search(trace):
            what = "lost its node"
        elif "ActorUnavailableError" in trace or re.search(r"actor \w+ is unavailable", trace):
            what = "lost contact with its node or worker"
        elif re.search(r"worker process has died|actor died unexpectedly", trace, re.I):  # SIGKILL, OOM, crash
            what = "lost its worker process (killed or crashed)"
        else:
            what = f"failed ({error_summary(trace)})"
        retry = max(1, int(getattr(trial.run_metadata, "num_failures", 1)))
        step = getattr(self, "_checkpoint_step", {}).get(str(trial))
        start = f"from step {step}" if step else "from its last checkpoint"
        self._say(f"[yellow]retry[/]    trial {spec.trial_id} {what}; retry {retry} of "
                  f"{self.plan.study.max_failures} {start}")
        with contextlib.suppress(Exception):  # the trace also in the trial's MLflow run (retry-N.txt)
            self.tracker._log_texts(self.tracker.child(spec), {f"retry-{retry}.txt": trace})

    def on_trial_complete(self, trial) -> None:
        spec, last = self.spec(trial), dict(trial.last_result or {})
        if last.get("phase") == "final":
            status, error = last.get("status", "finished"), last.get("error", "")
        else:  # stopped early by the scheduler
            status, error = "stopped", ""
        with _outputs(trial, last) as outputs:
            self.tracker.trial_complete(spec, last, outputs, status, error)
        value = last.get(self.plan.metric) if self.plan.metric else None
        shown = f"  {self.plan.metric}={value:.4g}" if isinstance(value, float) else ""
        colour = {"finished": "green", "stopped": "yellow"}.get(status, "red")
        secs = last.get("time/train_s")
        self._say(f"[{colour}]{status}[/] {spec.trial_id}{shown}" + (f"  ({secs:.0f} s)" if secs else "")
                  + (f"  {error}" if error else ""))
        if self.progress is not None:
            self.progress.ended(spec.trial_id, status, value if status == "finished" else None)
            self._progress(ended=True)

    def on_trial_error(self, trial) -> None:
        spec = self.spec(trial)
        trace = ""
        with contextlib.suppress(Exception):  # the driver-side copy is written first; storage later
            local = trial.error_file
            trace = Path(local).read_text() if local and Path(local).is_file() else str(trial.get_error() or "")
        error = error_summary(trace)
        self.tracker.trial_failed(spec, error, trace)
        self._say(f"[red]failed[/]   {spec.trial_id}  {error}")
        if self.progress is not None:
            self.progress.ended(spec.trial_id, "failed")
            self._progress(ended=True)

    def rows(self) -> list[dict]:
        """One row per child run, from MLflow (it also knows trials finished before a resume)."""
        metric = self.plan.metric
        out = []
        runs = self.tracker.children()
        if runs is None:  # MLflow unreachable (its writes are journaled): what this process saw
            states = self.progress.status if self.progress is not None else {}
            return [{"trial_id": tid, "status": st, "error": "", f"final/{metric}": None, "time/train_s": None,
                     "run_id": ""} for tid, st in sorted(states.items())]
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            out.append({"trial_id": tags.get("mfsweep.trial_id", run.info.run_name),
                        "status": tags.get("mfsweep.status", "running"), "error": tags.get("mfsweep.error", ""),
                        **{f"axis.{k[5:]}": v for k, v in tags.items() if k.startswith("axis.")},
                        f"final/{metric}": metrics.get(f"final/{metric}"),
                        "time/train_s": metrics.get("time/train_s"), "time/eval_s": metrics.get("time/eval_s"),
                        "time/checkpoint_s": metrics.get("time/checkpoint_s"),
                        "time/compile_s": metrics.get("time/compile_s"), "run_id": run.info.run_id})
        return sorted(out, key=lambda r: r["trial_id"])


@contextlib.contextmanager
def _outputs(trial, last: dict):
    """A local folder with the trial's outputs: its last Tune checkpoint, else its out_dir."""
    ckpt = trial.checkpoint
    if ckpt is not None and last.get("phase") == "final":
        with ckpt.as_directory() as d:
            if (Path(d) / "config.yaml").exists():
                yield Path(d)
                return
    out = Path(last.get("out_dir", "")) if last.get("out_dir") else None
    yield out if out is not None and out.is_dir() else None


class ForwardingCallback(Callback):
    """Tune callback with no state of its own: forwards to the live StudyEvents (or does nothing),
    noting on its ``timeline`` when each trial holds a slot and how long each callback kept the
    driver busy (the driver schedules no trial meanwhile)."""

    def _forward(self, name: str, trial, *args) -> None:
        ev = _LIVE.get("events")
        if ev is None:
            return
        t = time.perf_counter()
        try:
            getattr(ev, name)(trial, *args)
        finally:
            if ev.timeline is not None:
                ev.timeline.called(name, time.perf_counter() - t)
                if name == "on_trial_start":
                    ev.timeline.started(ev.spec(trial).trial_id, t)
                elif name in ("on_trial_complete", "on_trial_error"):
                    ev.timeline.ended(ev.spec(trial).trial_id, t)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._forward("on_trial_start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._forward("on_trial_result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._forward("on_trial_complete", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._forward("on_trial_error", trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._forward("on_trial_recover", trial)


def forwarding_callback() -> ForwardingCallback:
    return ForwardingCallback()
