"""A study file is the whole experiment on one page: base trial config, axes, seeds, search,
scheduler, resources, evaluation and tracking. ``load_study`` validates it (every error at once,
with dotted paths) and ``mfsweep.sweep.plan.make_plan`` expands it into trial configs.

    name: rt_sampling
    paper_table: "1a"
    base: {...}                                  # a full trial config (as for `mfsweep train`)
    axes:
      meanflow.frac_r_neq_t: [0.0, 0.25, 0.5]    # grid: a list of values
      model: {mlp-256: {backbone: mlp}, unet: {backbone: unet}}   # labelled values (reported by label)
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}   # search: uniform | loguniform | int | choice
    seeds: [0, 1]                                # the axis named seed
    search: {algorithm: grid}                    # grid | random | optuna (sampler tpe|random|cmaes)
    scheduler: {name: none}                      # none | asha (on the periodic eval metric)
    resources: {cpu: 1, gpu: 0, workers: 1}      # cpu, gpu per worker (fractional GPUs allowed); workers: data-parallel processes
    max_trials: 1000                             # `mfsweep run` asks for --yes above this many trials

Trial count: grid, the product of the axes' lengths times the seeds; random, search.num_samples
times the seeds; optuna, search.num_samples. ``mfsweep run`` stops (exit 2) when it exceeds
``max_trials`` (default 1000) unless given ``--yes``; ``mfsweep validate`` warns. A grid or random
study of more than MAX_EXPANDED_TRIALS (100,000) trials is refused by every command before it is
expanded (the plan validates every trial config).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mfsweep.config import ConfigError, Strict, parse_override, parse_yaml, read_text, set_dotted, validation_errors
from mfsweep.sweep.checks import axis_errors, axis_value_errors, shared_config_errors

#: Grid / random studies above this many trials are refused before expansion, whatever max_trials says.
MAX_EXPANDED_TRIALS = 100_000


class SearchSpec(Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"  # optuna only
    num_samples: int = Field(1, ge=1, description="random / optuna: points to try (random: each with every seed)")
    metric: str | None = Field(None, description="'{metric}/nfe_{k}'; default: the data's first metric at 1 NFE")
    mode: Literal["min", "max"] = "min"
    seed: int = 0  # the search algorithm's own seed (random points, Optuna sampler)


class SchedulerSpec(Strict):
    name: Literal["none", "asha"] = "none"
    metric: str | None = None  # default: search.metric
    mode: Literal["min", "max"] | None = None  # default: search.mode
    grace_period: int = Field(100, ge=1, description="training steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: base train.steps")


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractional GPUs allowed, e.g. 0.25")
    workers: int = Field(1, ge=1, description="data-parallel processes per trial (one node); cpu and gpu are per worker")


class Tracking(Strict):
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder
    experiment: str | None = None  # default: the study name


class Storage(Strict):
    path: str = "./runs/ray"  # local folder, shared mount, or a URI such as s3://bucket/prefix
    shared: bool = False  # assert that a plain path is shared by every node of a Ray cluster


class Study(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    paper_table: Literal["1a", "1b", "1c", "1d", "1e", "1f", "5", "2", "cifar10"] | None = None
    # grid studies: the value each axis is compared with in the report (paired differences over
    # seeds), e.g. {meanflow.frac_r_neq_t: 0.25} or a label; default: the base config's value
    baseline: dict[str, Any] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0, description="Ray retries of a crashed trial (from its checkpoint)")
    max_trials: int = Field(1000, ge=1, description="`mfsweep run` asks for --yes when the study has more trials")
    eval: dict[str, Any] = Field(default_factory=dict, description="merged over base.eval")
    tracking: Tracking = Field(default_factory=Tracking)
    storage: Storage = Field(default_factory=Storage)

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_shorthand(cls, v):
        return {"path": v} if isinstance(v, str) else v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct (a repeated seed would repeat trials), got {v}")
        return v

    @model_validator(mode="after")
    def _search_needs(self):
        if self.search.algorithm == "optuna" and self.search.sampler == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ValueError("search.sampler cmaes needs the `cmaes` package (pip install cmaes)") from None
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def trial_count(self) -> int:
        """Trials the study launches (counted, not expanded; see the module docstring)."""
        return trial_count(self.axes, len(self.seeds), self.search.algorithm, self.search.num_samples)


def trial_count(axes: dict, n_seeds: int, algorithm: str, num_samples: int) -> int:
    if algorithm == "optuna":
        return num_samples
    if algorithm == "random":
        return num_samples * n_seeds
    n = n_seeds
    for spec in axes.values():
        n *= len(spec) if isinstance(spec, (list, dict)) else 1
    return n


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set`` on the study's own keys: ``base.train.steps=200``, ``seeds=[0]``,
    ``axes.meanflow.frac_r_neq_t=[0, 0.5]`` (an axis key keeps its dots)."""
    if overrides and not isinstance(raw, dict):
        raise ConfigError([("", f"expected a mapping of study keys, got {type(raw).__name__}")], "--set")
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("axes.") and len(key) > 5:
            axes = raw.setdefault("axes", {})
            if not isinstance(axes, dict):
                raise ConfigError([("axes", "is not a mapping")], "--set")
            axes[key[5:]] = value
        else:
            set_dotted(raw, key, value)
    return raw


def parse_study(raw: Any, source: str = "study") -> Study:
    """Validate the study's own structure (not yet the trial configs); every error at once."""
    if not isinstance(raw, dict):
        raise ConfigError([("", f"expected a mapping, got {type(raw).__name__}")], source)
    errors: list[tuple[str, str]] = []
    study = None
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        errors += validation_errors(exc)
    algorithm = raw.get("search", {}).get("algorithm", "grid") if isinstance(raw.get("search"), dict) else "grid"
    shape = axis_errors(raw.get("axes", {}), algorithm)
    errors += shape
    if study is not None and study.resources.workers > 1:
        errors += _batch_split_errors(study)
    # also what is wrong in the trial config parts, all in one go: the base, and each axis value
    # (checked against the base, leaving out the base's own errors)
    shared = shared_config_errors(raw.get("base", {}), raw.get("eval", {}))
    errors += shared
    if shared and not shape:
        errors += axis_value_errors(raw.get("axes", {}), algorithm, raw.get("base", {}), raw.get("eval", {}), shared)
    if study is not None and not shape and study.search.algorithm != "optuna":
        n = study.trial_count
        if n > MAX_EXPANDED_TRIALS:
            where = "axes" if study.search.algorithm == "grid" else "search.num_samples"
            errors.append((where, f"{n:,} trials; mfsweep expands at most {MAX_EXPANDED_TRIALS:,} "
                                  "(split the study, or use search.algorithm: optuna)"))
    if errors:
        raise ConfigError(errors, source)
    return study


def _batch_split_errors(study: Study) -> list[tuple[str, str]]:
    """``train.batch_size`` (the global batch) must split over ``resources.workers`` processes: the
    base value, or each value of a ``train.batch_size`` list axis (other forms are checked by the trial)."""
    from mfsweep.config import TrainConfig

    w = study.resources.workers
    axis = study.axes.get("train.batch_size")
    if isinstance(axis, list):
        candidates = [(f"axes.train.batch_size[{i}]", v) for i, v in enumerate(axis)]
    elif axis is not None:  # a search distribution: each suggested value is checked by its trial
        candidates = []
    else:
        train = study.base.get("train") if isinstance(study.base.get("train"), dict) else {}
        candidates = [("base.train.batch_size", train.get("batch_size", TrainConfig.model_fields["batch_size"].default))]
    return [(path, f"{b} does not split over resources.workers = {w} processes; use a multiple of {w}")
            for path, b in candidates if isinstance(b, int) and b % w]


def load_study(path: str | Path, overrides: list[str] = (), smoke: bool = False) -> tuple[Study, str]:
    """Read, override (``--set``, then ``--smoke``: mfsweep.sweep.smoke) and validate a study file.
    Returns (Study, the file's text as given; with smoke, marked so that it hashes apart)."""
    text = read_text(path, "study")
    raw = parse_yaml(text, f"study {path}")
    raw = apply_overrides(raw if raw is not None else {}, list(overrides))
    if smoke:
        from mfsweep.sweep.smoke import smoke_study

        try:
            smoked = smoke_study(raw)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # e.g. train.steps: abc
            parse_study(raw, f"study {path}")  # names the bad value's path
            raise ConfigError([("", f"--smoke cannot shrink this study: {exc}")], f"study {path}") from None
        raw, text = smoked, text + "\n# --smoke\n"
    return parse_study(raw, f"study {path}"), text


def study_hash(payload: Any) -> str:
    """Stable short hash of anything JSON-able (the resolved trial list), to detect a changed study."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
