"""Study → trial plan: the grid × seeds (or pre-drawn random points × seeds) expanded into validated
``TrialConfig``s with deterministic trial ids; for Optuna, the space and a validated corner check.

Every trial config is validated before any compute. An error is reported against what the user
wrote: ``axes.meanflow.frac_r_neq_t[2]`` for a bad axis value, ``trial t005-...`` for a bad
combination, ``base.`` / ``eval.`` for the shared parts.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfsweep.sweep.axes import as_tag, get_dotted, set_axis, short_name, trial_id, varying_leaves
from mfsweep.config import ConfigError, TrialConfig, load_trial_config
from mfsweep.data import TOYS
from mfsweep.sweep.study import Study, is_distribution, study_hash

_METRIC_KEY = re.compile(r"^([A-Za-z0-9_]+)/nfe_(\d+)$")


@dataclass
class Axis:
    """One swept key: ``values`` (grid / choice) or a distribution ``kind`` with ``bounds``."""

    key: str
    values: list[Any] | None = None
    kind: str = "grid"  # grid | choice | uniform | loguniform | int
    bounds: tuple[float, float] | None = None
    leaves: list[str] = field(default_factory=list)  # reported axis keys (scalars of the schema)
    labels: list[str] | None = None  # labelled values ({label: value} in the study): reported as the label

    def choices(self) -> list[Any]:
        """What a search algorithm picks from: labels, or the values themselves when scalar."""
        return list(self.labels) if self.labels else choice_labels(self.values)

    def id_value(self, value: Any) -> Any:
        """The value as it appears in a trial id (its label for labelled axes)."""
        return self.labels[self.values.index(value)] if self.labels else value


@dataclass
class TrialSpec:
    index: int
    trial_id: str
    seed: int
    choices: dict[str, Any]  # axis key → the value as written (or drawn)
    config: TrialConfig
    tags: dict[str, str]  # reported axis key → value string, seed last


@dataclass
class StudyPlan:
    study: Study
    base_raw: dict  # base config with the study's eval overrides (no seed / name)
    axes: list[Axis]
    trials: list[TrialSpec]  # empty for optuna (trials come from the sampler)
    metric: str | None  # '{metric}/nfe_{k}' the search / scheduler / summary use

    @property
    def axis_keys(self) -> list[str]:
        """Reported axis keys (mfsweep.sweep.axes), seed last."""
        return [leaf for a in self.axes for leaf in a.leaves] + ["seed"]

    @property
    def by_id(self) -> dict[str, TrialSpec]:
        if len(getattr(self, "_by_id", ())) != len(self.trials):
            self._by_id = {t.trial_id: t for t in self.trials}
        return self._by_id

    @property
    def base_config(self) -> TrialConfig:
        return load_trial_config(self.compose({}, self.study.seeds[0], "base"), source="base config")

    def compose(self, choices: dict[str, Any], seed: int, name: str) -> dict:
        raw = copy.deepcopy(self.base_raw)
        for key, value in choices.items():
            set_axis(raw, key, value)
        raw["seed"], raw["name"] = seed, name
        data = raw.get("data")
        if isinstance(data, dict) and isinstance(data.get("path"), str) and "://" not in data["path"]:
            data["path"] = str(Path(data["path"]).expanduser().resolve())  # trials run in other folders
        return raw

    def tags_of(self, cfg: TrialConfig, choices: dict[str, Any]) -> dict[str, str]:
        tags = {}
        for a in self.axes:
            if a.labels:
                tags[a.key] = str(a.id_value(choices[a.key]))
            else:
                tags.update({leaf: as_tag(get_dotted(cfg, leaf)) for leaf in a.leaves})
        return {**tags, "seed": str(cfg.seed)}

    def _id_parts(self, choices: dict[str, Any], digits: int | None = None) -> list[tuple[str, Any]]:
        names = [a.key for a in self.axes]
        parts = []
        for a in self.axes:
            v = a.id_value(choices[a.key])
            parts.append((short_name(a.key, names), float(f"{v:.{digits}g}") if digits and isinstance(v, float) else v))
        return parts

    def search_trial(self, number: int, tune_axes: dict[str, Any]) -> TrialSpec:
        """An Optuna trial (``number`` from 0): Tune's suggested values → validated config.
        Its seed cycles through ``seeds``."""
        choices = {}
        for axis in self.axes:
            value = tune_axes[axis.key]
            if axis.kind in ("grid", "choice"):
                value = dict(zip(axis.choices(), axis.values))[value]
            choices[axis.key] = value
        seed = self.study.seeds[number % len(self.study.seeds)]
        tid = trial_id(number, self._id_parts(choices, digits=4), seed)
        cfg = load_trial_config(self.compose(choices, seed, tid), source=f"trial {tid}")
        return TrialSpec(number, tid, seed, choices, cfg, self.tags_of(cfg, choices))

    def fingerprint(self) -> str:
        """Changes whenever the trials would differ (resume refuses a changed study)."""
        s = self.study
        return study_hash({"trials": [(t.trial_id, t.config.model_dump()) for t in self.trials],
                           "base": self.base_raw, "axes": s.axes, "seeds": s.seeds,
                           "search": s.search.model_dump(), "scheduler": s.scheduler.model_dump()})


def choice_labels(values: list[Any]) -> list[Any]:
    """Values a search algorithm can hold: scalars as they are, mappings / lists as strings."""
    if all(isinstance(v, (str, int, float, bool)) for v in values):
        return list(values)
    return [as_tag(v) for v in values]


def _round(v: Any) -> Any:
    return float(f"{v:.6g}") if isinstance(v, float) else v


def _parse_axes(study: Study) -> list[Axis]:
    axes = []
    for key, spec in study.axes.items():
        kind = "grid" if study.search.algorithm == "grid" else "choice"
        if isinstance(spec, list):
            axes.append(Axis(key, list(spec), kind))
        elif not is_distribution(spec):  # labelled values
            axes.append(Axis(key, list(spec.values()), kind, labels=[str(k) for k in spec]))
        else:
            kind, arg = next(iter(spec.items()))
            axes.append(Axis(key, list(arg), kind) if kind == "choice" else Axis(key, None, kind, tuple(arg)))
    return axes


def _draw(axis: Axis, rng: np.random.Generator) -> Any:
    if axis.values is not None:
        return axis.values[int(rng.integers(len(axis.values)))]
    lo, hi = axis.bounds
    if axis.kind == "int":
        return int(rng.integers(int(lo), int(hi) + 1))
    if axis.kind == "loguniform":
        return _round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return _round(float(rng.uniform(lo, hi)))


def _probe_values(axis: Axis) -> list[tuple[str, Any]]:
    """(error path, value) pairs that stand for the axis when validating it alone."""
    if axis.labels:
        return [(f"axes.{axis.key}.{label}", v) for label, v in zip(axis.labels, axis.values)]
    if axis.values is not None:
        return [(f"axes.{axis.key}[{i}]" if axis.kind == "grid" else f"axes.{axis.key}.choice[{i}]", v)
                for i, v in enumerate(axis.values)]
    lo, hi = axis.bounds
    cast = int if axis.kind == "int" else float
    return [(f"axes.{axis.key}.{axis.kind}", cast(lo)), (f"axes.{axis.key}.{axis.kind}", cast(hi))]


def _validate(raw: dict, errors: list, source: str, path: str | None = None, prefix: str = "",
              axis_key: str = "") -> TrialConfig | None:
    """Validate one raw trial config; errors go to ``path`` (the message names the key unless it is
    the axis itself) or to ``prefix + key``."""
    try:
        return load_trial_config(raw, prefix=prefix, source=source)
    except ConfigError as exc:
        for inner, msg in exc.errors:
            if path is None:
                errors.append((inner, msg))
            else:
                errors.append((path, msg if inner in ("", axis_key) else f"{inner}: {msg}"))
        return None


def shared_config_errors(base: Any, eval_overrides: Any) -> list[tuple[str, str]]:
    """Errors in the study's ``base`` trial config and its ``eval`` overrides (paths as written)."""
    errors: list[tuple[str, str]] = []
    if not isinstance(base, dict):
        return [("base", f"expected a mapping (a trial config), got {type(base).__name__}")]
    base = dict(base)
    if base.pop("seed", None) is not None:
        errors.append(("base.seed", "set the training seeds in the study's `seeds:` list (the axis named seed)"))
    _validate({**base, "seed": 0, "name": "base"}, errors, "base", prefix="base.")
    if isinstance(eval_overrides, dict):
        _validate({"eval": eval_overrides}, errors, "eval")  # paths come out as eval.<key>, as written
    return errors


def _check_metric(plan: StudyPlan, errors: list) -> None:
    study, base = plan.study, plan.base_config
    needs = study.search.algorithm == "optuna" or study.scheduler.name == "asha"
    for path, metric in (("search.metric", study.search.metric), ("scheduler.metric", study.scheduler.metric)):
        if metric is None:
            continue
        m = _METRIC_KEY.match(metric)
        from mfsweep.evaluation.metrics import METRICS

        if not m or m.group(1) not in METRICS:
            errors.append((path, f"expected '{{metric}}/nfe_{{k}}' with metric in {', '.join(METRICS)}, got {metric!r}"))
        elif int(m.group(2)) not in base.eval.nfe:
            errors.append((path, f"NFE {m.group(2)} is not evaluated; eval.nfe is {base.eval.nfe}"))
        elif base.eval.metrics is not None and m.group(1) not in base.eval.metrics:
            errors.append((path, f"metric {m.group(1)!r} is not computed; eval.metrics is {base.eval.metrics}"))
    if needs and plan.metric is None:
        errors.append(("search.metric", "set the metric to optimise, e.g. swd/nfe_1"))
    if study.scheduler.name == "asha":
        if not 0 < base.eval.every_steps < base.train.steps:
            errors.append(("scheduler.name", "asha stops trials on the periodic evaluation: "
                                             f"set 0 < eval.every_steps < train.steps ({base.train.steps})"))
        if study.scheduler.grace_period >= (study.scheduler.max_t or base.train.steps):
            errors.append(("scheduler.grace_period", "must be below max_t (default: train.steps)"))


def _default_metric(study: Study, base: dict) -> str | None:
    if study.search.metric:
        return study.search.metric
    ev, data = base.get("eval", {}), base.get("data", {})
    nfes = ev.get("nfe") or [1, 2, 4, 8]
    names = ev.get("metrics")
    if not names:
        name = data.get("name", "checkerboard")
        names = ["swd"] if name in TOYS else ["fd_digits"] if name == "digits" else None
    return f"{names[0]}/nfe_{min(nfes)}" if names else None


def make_plan(study: Study, source: str = "study") -> StudyPlan:
    """Expand and validate every trial. Raises ConfigError listing all problems."""
    errors = shared_config_errors(study.base, study.eval)
    if errors:
        raise ConfigError(errors, source)
    base_raw = copy.deepcopy(study.base)
    base_raw["eval"] = {**base_raw.get("eval", {}), **study.eval}
    if (base_raw.get("train") or {}).get("threads") is None:  # one torch thread per reserved CPU
        base_raw.setdefault("train", {})["threads"] = max(1, int(study.resources.cpu))
    plan = StudyPlan(study, base_raw, _parse_axes(study), [], _default_metric(study, base_raw))
    base_cfg = _validate(plan.compose({}, study.seeds[0], "base"), errors, source, prefix="base.")
    if base_cfg is None:
        raise ConfigError(errors, source)

    bad_values: set[tuple[str, int]] = set()
    for axis in plan.axes:
        configs = []
        for i, (path, value) in enumerate(_probe_values(axis)):
            cfg = _validate(plan.compose({axis.key: value}, study.seeds[0], "probe"), errors, source, path,
                            axis_key=axis.key)
            configs.append(cfg) if cfg is not None else bad_values.add((axis.key, i))
        axis.leaves = [axis.key] if axis.labels or not configs else varying_leaves(axis.key, configs)
    _check_metric(plan, errors)

    algo = study.search.algorithm
    if algo != "optuna":
        if algo == "grid":
            points = list(itertools.product(*[list(enumerate(a.values)) for a in plan.axes]))
        else:
            rng = np.random.default_rng(study.search.seed)
            points = [[(-1, _draw(a, rng)) for a in plan.axes] for _ in range(study.search.num_samples)]
        grid = [(seed, point) for seed in study.seeds for point in points]  # seed outermost
        for index, (seed, point) in enumerate(grid):
            choices = {a.key: v for a, (_, v) in zip(plan.axes, point)}
            tid = trial_id(index, plan._id_parts(choices), seed)
            if any((a.key, i) in bad_values for a, (i, _) in zip(plan.axes, point)):
                continue  # already reported against the axis value
            cfg = _validate(plan.compose(choices, seed, tid), errors, source, f"trial {tid}")
            if cfg is not None:
                plan.trials.append(TrialSpec(index, tid, seed, choices, cfg, plan.tags_of(cfg, choices)))
                _check_files(cfg, f"trial {tid}", errors)
    else:
        _check_files(base_cfg, "base", errors)
    if errors:
        raise ConfigError(_dedupe(errors), source)
    return plan


def _check_files(cfg: TrialConfig, path: str, errors: list) -> None:
    if cfg.data.name == "npy" and cfg.data.path and not Path(cfg.data.path).expanduser().is_file():
        errors.append((path, f"data.path: file not found: {cfg.data.path}"))


def _dedupe(errors: list) -> list:
    seen, out = set(), []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out
