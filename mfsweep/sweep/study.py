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
    resources: {cpu: 1, gpu: 0}                  # per trial; fractional GPUs allowed
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mfsweep.config import ConfigError, Strict, parse_override, read_yaml, set_dotted, validation_errors
from mfsweep.sweep.checks import axis_errors, shared_config_errors


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


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set`` on the study's own keys: ``base.train.steps=200``, ``seeds=[0]``,
    ``axes.meanflow.frac_r_neq_t=[0, 0.5]`` (an axis key keeps its dots)."""
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
    errors += axis_errors(raw.get("axes", {}), algorithm)
    if errors:  # also report what is wrong in the trial config parts, all in one go
        errors += shared_config_errors(raw.get("base", {}), raw.get("eval", {}))
        raise ConfigError(errors, source)
    return study


def load_study(path: str | Path, overrides: list[str] = (), smoke: bool = False) -> tuple[Study, str]:
    """Read, override (``--set``, then ``--smoke``: mfsweep.sweep.smoke) and validate a study file.
    Returns (Study, the file's text as given; with smoke, marked so that it hashes apart)."""
    raw = apply_overrides(read_yaml(path, "study"), list(overrides))
    text = Path(path).read_text()
    if smoke:
        from mfsweep.sweep.smoke import smoke_study

        raw, text = smoke_study(raw), text + "\n# --smoke\n"
    return parse_study(raw, f"study {path}"), text


def study_hash(payload: Any) -> str:
    """Stable short hash of anything JSON-able (the resolved trial list), to detect a changed study."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
