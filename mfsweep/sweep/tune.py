"""Study plan → Ray Tune: a thin function trainable around ``mfsweep.training.train.train`` plus the param
space, search algorithm, scheduler and resources. The training loop itself never imports Ray.

Each trial trains in ``<experiment>/<trial id>/train`` (see ``out_dir``). Every ``train.checkpoint_every``
steps its ``checkpoint.pt`` is reported as a Tune checkpoint, so a retried or resumed trial copies
it back and ``train`` continues from that step. The final report carries the trial's outputs
(config.yaml, metrics.json, samples/) as the last checkpoint: the driver reads them from there,
on local disk, shared storage or s3:// alike.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from mfsweep.fileio import write_text_atomic
from mfsweep.schema import METRIC_KEY
from mfsweep.sweep.plan import StudyPlan, TrialSpec

OUTPUTS = ("config.yaml", "metrics.json", "samples", "checkpoint.pt")
WORKER_PID = "worker.pid"  # "<pid> <host>" of the process training the trial, in its out_dir


def trial_of(plan: StudyPlan, config: dict, name: str) -> TrialSpec:
    """The TrialSpec behind a Tune trial (its config dict and its name)."""
    if "trial_id" in config:
        return plan.by_id[config["trial_id"]]
    number = int(re.match(r"t(\d+)", name).group(1))
    return plan.search_trial(number, config["axes"])


class TrialNamer:
    """Tune ``trial_name_creator`` / ``trial_dirname_creator``: the deterministic trial id."""

    def __init__(self, plan: StudyPlan):
        self.plan = plan

    def __call__(self, trial) -> str:
        if "trial_id" in trial.config:
            return trial.config["trial_id"]
        number = int(trial.experiment_tag.split("_", 1)[0]) - 1  # Tune's 1-based trial counter
        return self.plan.search_trial(number, trial.config["axes"]).trial_id


class TuneReporter:
    """``TrainHooks`` that forward progress to ``tune.report`` (with checkpoints)."""

    def __init__(self, spec: TrialSpec, out_dir: Path, metric: str | None, start_step: int = 0):
        self.spec, self.out, self.metric, self.start_step = spec, out_dir, metric, start_step
        self.final: dict[str, float] = {}
        self.final_samples = 0

    def _report(self, step: int, metrics: dict, files: list[Path] = ()) -> None:
        from ray import tune

        result = {"step": step, "mfsweep_trial": self.spec.trial_id, "out_dir": str(self.out), **metrics}
        if self.start_step:
            result["resumed_from"] = self.start_step
        if not files:
            tune.report(result)
            return
        stage = Path(tempfile.mkdtemp(prefix="ckpt-", dir=self.out.parent))
        try:
            for f in files:
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, stage / f.name)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def on_log(self, step, metrics):
        self._report(step, {"phase": "train", **metrics})

    def on_eval(self, step, values, num_samples, phase):
        values = {k: float(v) for k, v in values.items() if METRIC_KEY.match(k)}
        if phase == "final":  # reported by finish() together with the outputs
            self.final, self.final_samples = values, num_samples
            return
        out = {f"eval/{k}": v for k, v in values.items()}
        out["eval/num_samples"] = float(num_samples)
        if self.metric in values:
            out[self.metric] = values[self.metric]
        self._report(step, {"phase": "eval", **out})

    def on_checkpoint(self, step, path):
        self._report(step, {"phase": "checkpoint"}, [Path(path)])

    def finish(self, result) -> None:
        out = {"phase": "final", "status": result.status, "error": result.error or "",
               "time/train_s": float(result.train_time_s), "time/eval_s": float(result.eval_time_s),
               "time/checkpoint_s": float(result.checkpoint_time_s)}
        if result.compile_time_s:  # train.compile: the first step of each process, apart from training
            out["time/compile_s"] = float(result.compile_time_s)
        out.update({f"final/{k}": v for k, v in self.final.items()})
        if self.final:
            out["final/num_samples"] = float(self.final_samples)
        if self.metric in self.final:
            out[self.metric] = self.final[self.metric]
        files = [self.out / name for name in OUTPUTS if (self.out / name).exists()]
        self._report(result.step, out, files)


def _restore_checkpoint(out: Path) -> int:
    """Copy the trial's last Tune checkpoint into ``out`` unless ``out`` already holds a later step.
    Returns the step training will continue from (0: a fresh start).

    Damaged files are skipped, never fatal here: a restored checkpoint that is not usable (see
    ``mfsweep.training.checkpoint.check``) is reported and the trial folder's own checkpoints are
    used; a damaged ``checkpoint.pt`` there is set aside by ``train`` (falling back to
    ``checkpoint.prev.pt``)."""
    from ray import tune

    from mfsweep.training import checkpoint as ckpt

    dst = out / ckpt.CHECKPOINT_NAME
    have = ckpt.usable_step(dst) or 0
    restored = tune.get_checkpoint()
    if restored is None:
        return have
    with restored.as_directory() as d:
        src = Path(d) / ckpt.CHECKPOINT_NAME
        if not src.exists():
            return have
        state, reason = ckpt.check(src)
        if state is None:
            ckpt.log.warning("the restored Tune checkpoint %s is unusable (%s); continuing from step %d of %s",
                             src, reason, have, out)
            return have
        if int(state["step"]) <= have:
            return have
        ckpt.install(src, dst)
        return int(state["step"])


def _finished_before(out: Path, spec: TrialSpec):
    """The TrainResult in ``out/metrics.json`` if this trial already finished all its steps."""
    import json

    from mfsweep.training.train import TrainResult

    try:
        stored = TrainResult(**json.loads((out / "metrics.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    done = stored.status == "finished" and stored.step >= spec.config.train.steps
    return stored if done and (out / "config.yaml").exists() else None


def out_dir(exp_path: str, trial_id: str) -> Path:
    """Where a trial trains: ``<experiment>/<trial id>/train`` on a local or shared storage path
    (its outputs survive a killed driver; a resumed trial finds them there); with a URI storage
    (s3://...) a node-local scratch folder, refilled from the trial's Tune checkpoint on resume."""
    if "://" in exp_path:
        scheme, rest = exp_path.split("://", 1)
        return Path(tempfile.gettempdir()) / "mfsweep" / scheme / rest / trial_id / "train"
    return Path(exp_path) / trial_id / "train"


def run_trial(config: dict, plan: StudyPlan, exp_path: str) -> None:
    """The Tune function trainable: config dict → TrialConfig → train() → reports."""
    from ray import tune

    from mfsweep.training.train import train

    spec = trial_of(plan, config, tune.get_context().get_trial_name())
    out = out_dir(exp_path, spec.trial_id)
    out.mkdir(parents=True, exist_ok=True)
    # which process trains this trial (to find or signal it, e.g. in tests/faults/test_worker_kill.py)
    write_text_atomic(out / WORKER_PID, f"{os.getpid()} {socket.gethostname()}\n")
    start_step = _restore_checkpoint(out)
    reporter = TuneReporter(spec, out, plan.metric, start_step)
    result = _finished_before(out, spec)
    workers = plan.study.resources.workers
    if result is None and workers > 1:  # this actor is rank 0; ranks 1..W-1 are spawned on this node
        from mfsweep.training.launch import launch

        result = launch(spec.config, out, workers, hooks=reporter)
    elif result is None:
        result = train(spec.config, out, hooks=reporter, progress=False)
    else:  # finished before the driver stopped: report the stored outcome, train nothing
        reporter.final = {k: v for k, v in result.metrics.items() if METRIC_KEY.match(k)}
        reporter.final_samples = int(result.metrics.get("num_samples", 0))
    reporter.finish(result)


def param_space(plan: StudyPlan) -> dict[str, Any]:
    from ray import tune

    if plan.study.search.algorithm != "optuna":
        return {"trial_id": tune.grid_search([t.trial_id for t in plan.trials])}
    space = {}
    for axis in plan.axes:
        if axis.values is not None:
            space[axis.key] = tune.choice(axis.choices())
        else:
            lo, hi = axis.bounds
            space[axis.key] = {"uniform": tune.uniform, "loguniform": tune.loguniform}.get(
                axis.kind, lambda a, b: tune.randint(int(a), int(b) + 1))(lo, hi)
    return {"axes": space}


def search_algorithm(plan: StudyPlan):
    """None for grid / pre-drawn random points; OptunaSearch with the chosen sampler otherwise."""
    search = plan.study.search
    if search.algorithm != "optuna":
        return None
    import optuna

    from mfsweep.sweep.searchers import EvalOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler}[search.sampler](seed=search.seed)
    return EvalOptunaSearch(metric=plan.metric, mode=search.mode, sampler=sampler)


def scheduler(plan: StudyPlan):
    spec = plan.study.scheduler
    if spec.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    base = plan.base_config
    return ASHAScheduler(time_attr="step", metric=spec.metric or plan.metric, mode=spec.mode or plan.study.search.mode,
                         max_t=spec.max_t or base.train.steps, grace_period=spec.grace_period,
                         reduction_factor=spec.reduction_factor)


def trainable(plan: StudyPlan, exp_path: str):
    """``run_trial`` bound to the plan (object store) with the study's per-trial resources."""
    from ray import tune

    res = plan.study.resources
    resources = {"cpu": res.cpu, "gpu": res.gpu} if res.gpu else {"cpu": res.cpu}
    if res.workers > 1:  # one bundle on one node: the actor sees all W GPUs (CUDA_VISIBLE_DEVICES)
        bundle = {"CPU": res.cpu * res.workers, **({"GPU": res.gpu * res.workers} if res.gpu else {})}
        resources = tune.PlacementGroupFactory([bundle])
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan, exp_path=exp_path), resources)


def make_tuner(plan: StudyPlan, storage: str, name: str, callbacks: list, max_concurrent: int | None):
    """A new Tuner for the plan: experiment ``<storage>/<name>``."""
    from ray import tune

    study = plan.study
    # The searcher / scheduler metric appears only in evaluation reports, not in every report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    namer = TrialNamer(plan)
    num_samples = study.search.num_samples if study.search.algorithm == "optuna" else 1
    tune_config = tune.TuneConfig(search_alg=search_algorithm(plan), scheduler=scheduler(plan),
                                  num_samples=num_samples, trial_name_creator=namer, trial_dirname_creator=namer,
                                  reuse_actors=True,  # a worker keeps torch & data imports between trials
                                  max_concurrent_trials=max_concurrent or study.max_concurrent_trials)
    return tune.Tuner(trainable(plan, f"{storage}/{name}"), param_space=param_space(plan), tune_config=tune_config,
                      run_config=run_config(plan, storage, name, callbacks))


def run_config(plan: StudyPlan, storage: str, name: str, callbacks: list):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks, verbose=0,
                          failure_config=tune.FailureConfig(max_failures=plan.study.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2))


def restore_tuner(plan: StudyPlan, path: str):
    """Resume an interrupted experiment: finished trials stay finished, unfinished and errored
    trials continue from their last checkpoint."""
    from ray import tune

    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    return tune.Tuner.restore(path, trainable(plan, path), resume_unfinished=True, resume_errored=True,
                              param_space=param_space(plan))

