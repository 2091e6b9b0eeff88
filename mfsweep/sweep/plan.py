"""Study → trial plan: the grid × seeds (or pre-drawn random points × seeds) expanded into validated
``TrialConfig``s with deterministic trial ids; for Optuna, the axes as a search space, a check of
each axis's extremes, and the trial an Optuna suggestion stands for (``StudyPlan.search_trial``).

Every trial config is validated before any compute; ``mfsweep.sweep.checks`` says where each error
is reported.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfsweep.config import (ConfigError, TrialConfig, get_dotted, load_trial_config, realised_fraction_errors,
                             realised_r_neq_t, set_dotted)
from mfsweep.data import TOYS
from mfsweep.sweep import checks
from mfsweep.schema import metric_key, short_axis_name
from mfsweep.sweep.axes import Axis, as_tag, draw, parse_axes, trial_id, varying_leaves
from mfsweep.sweep.study import Study, study_hash

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
    baseline: dict[str, str] = field(default_factory=dict)  # reported axis key → tag value (study.baseline)

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
            set_dotted(raw, key, value, merge=True)
        raw["seed"], raw["name"] = seed, name
        # trials run in other folders: local paths become absolute (a VAE given as a hub name, e.g.
        # stabilityai/sd-vae-ft-ema, is only made absolute when such a folder exists here)
        for block, key in (("data", "path"), ("eval", "reference_stats"), ("data", "vae")):
            node = raw.get(block)
            value = node.get(key) if isinstance(node, dict) else None
            if isinstance(value, str) and "://" not in value and (key != "vae" or Path(value).expanduser().exists()):
                node[key] = str(Path(value).expanduser().resolve())
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
            parts.append((short_axis_name(a.key, names), float(f"{v:.{digits}g}") if digits and isinstance(v, float) else v))
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
        # the fraction was checked over the searched range at validation (_searched_fraction_errors):
        # a suggestion must never stop the study while Tune names the trial
        cfg = load_trial_config(self.compose(choices, seed, tid), source=f"trial {tid}", check_fraction=False)
        return TrialSpec(number, tid, seed, choices, cfg, self.tags_of(cfg, choices))

    def fingerprint(self) -> str:
        """Changes whenever the trials would differ (resume refuses a changed study)."""
        s = self.study
        return study_hash({"trials": [(t.trial_id, t.config.model_dump()) for t in self.trials],
                           "base": self.base_raw, "axes": s.axes, "seeds": s.seeds,
                           "search": s.search.model_dump(), "scheduler": s.scheduler.model_dump()})


def _default_metric(study: Study, base: dict) -> str | None:
    if study.search.metric:
        return study.search.metric
    ev, data = base.get("eval", {}), base.get("data", {})
    nfes = ev.get("nfe") or [1, 2, 4, 8]
    names = ev.get("metrics")
    if not names:
        name = data.get("name", "checkerboard")
        names = ["swd"] if name in TOYS else ["fd_digits"] if name == "digits" else None
    return metric_key(names[0], min(nfes)) if names else None


def make_plan(study: Study, source: str = "study") -> StudyPlan:
    """Expand and validate every trial. Raises ConfigError listing all problems."""
    errors = checks.shared_config_errors(study.base, study.eval)
    if errors:
        raise ConfigError(errors, source)
    base_raw = copy.deepcopy(study.base)
    base_raw["eval"] = {**base_raw.get("eval", {}), **study.eval}
    if (base_raw.get("train") or {}).get("threads") is None:  # one torch thread per reserved CPU
        base_raw.setdefault("train", {})["threads"] = max(1, int(study.resources.cpu))
    plan = StudyPlan(study, base_raw, parse_axes(study.axes, study.search.algorithm), [], _default_metric(study, base_raw))
    base_cfg = checks.validate_into(plan.compose({}, study.seeds[0], "base"), errors, source, prefix="base.")
    if base_cfg is None:
        raise ConfigError(errors, source)

    bad_values: set[tuple[str, int]] = set()
    for axis in plan.axes:
        configs = []
        for i, (path, value) in enumerate(checks.probe_values(axis)):
            cfg = checks.validate_into(plan.compose({axis.key: value}, study.seeds[0], "probe"), errors, source, path,
                            axis_key=axis.key)
            configs.append(cfg) if cfg is not None else bad_values.add((axis.key, i))
        axis.leaves = [axis.key] if axis.labels or not configs else varying_leaves(axis.key, configs)
    checks.check_metric(plan, errors)
    _searched_fraction_errors(plan, base_cfg, errors)

    algo, workers = study.search.algorithm, study.resources.workers
    if algo != "optuna":
        if algo == "grid":
            points = list(itertools.product(*[list(enumerate(a.values)) for a in plan.axes]))
        else:
            rng = np.random.default_rng(study.search.seed)
            points = [[(-1, draw(a, rng)) for a in plan.axes] for _ in range(study.search.num_samples)]
        grid = [(seed, point) for seed in study.seeds for point in points]  # seed outermost
        for index, (seed, point) in enumerate(grid):
            choices = {a.key: v for a, (_, v) in zip(plan.axes, point)}
            tid = trial_id(index, plan._id_parts(choices), seed)
            if any((a.key, i) in bad_values for a, (i, _) in zip(plan.axes, point)):
                continue  # already reported against the axis value
            cfg = checks.validate_into(plan.compose(choices, seed, tid), errors, source, f"trial {tid}")
            if cfg is not None and workers > 1:  # each worker's loss rounds the fraction on its own rows
                per_worker = realised_fraction_errors(cfg, workers)
                errors += [(f"trial {tid}: {path}", msg) for path, msg in per_worker]
                cfg = None if per_worker else cfg
            if cfg is not None:
                plan.trials.append(TrialSpec(index, tid, seed, choices, cfg, plan.tags_of(cfg, choices)))
                checks.check_files(cfg, f"trial {tid}", errors)
    else:
        checks.check_files(base_cfg, "base", errors)
    if study.baseline:
        plan.baseline = _baseline_tags(plan, errors)
    if errors:
        raise ConfigError(checks.dedupe(errors), source)
    return plan


def _searched_fraction_errors(plan: StudyPlan, base_cfg, errors: list) -> None:
    """A *searched* ``meanflow.frac_r_neq_t`` (uniform / loguniform range) is checked over its range at
    validation, since a suggestion is only known when Tune names the trial, mid-study. A range that
    starts above 0 must be realisable throughout (e.g. [0.001, 0.5] at 256 rows is refused: 0.001
    gives 0 rows with r ≠ t); a range that starts at 0 includes Flow Matching by the user's choice,
    so its suggestions that round to 0 rows are accepted, but a realised share off by more than the
    tolerance (tiny batches) is still refused."""
    from types import SimpleNamespace

    for axis in plan.axes:
        if axis.key != "meanflow.frac_r_neq_t" or axis.bounds is None or axis.kind == "int":
            continue
        lo, hi = axis.bounds
        probes = sorted({lo, hi, *(lo + (hi - lo) * i / 200 for i in range(201)),
                         *(v for v in (0.25 / max(1, base_cfg.train.batch_size),) if lo < v < hi)})
        for v in probes:
            fake = SimpleNamespace(method=base_cfg.method, train=base_cfg.train,
                                   meanflow=SimpleNamespace(frac_r_neq_t=v))
            workers = plan.study.resources.workers
            bad = realised_fraction_errors(fake, workers)
            rows = realised_r_neq_t(max(1, base_cfg.train.batch_size // workers), v)
            if bad and v > 0 and (lo > 0 or rows > 0):
                errors.append((f"axes.{axis.key}", f"the searched range [{lo:g}, {hi:g}] holds values the batch "
                                                   f"cannot realise, e.g. {v:.3g}: {bad[0][1]}"))
                break


def _baseline_tags(plan: StudyPlan, errors: list) -> dict[str, str]:
    """``study.baseline`` as the report sees it: {reported axis key: tag value}, taken from a planned
    trial with that value, so that it matches the trials' ``axis.*`` tags exactly."""
    study, out = plan.study, {}
    if study.search.algorithm != "grid":
        errors.append(("baseline", "applies to grid studies (a search has no shared values to compare)"))
        return out
    axes = {a.key: a for a in plan.axes}
    for key, value in study.baseline.items():
        axis = axes.get(key)
        if axis is None:
            errors.append((f"baseline.{key}", f"not an axis of this study; axes: {', '.join(axes)}"))
            continue
        match = [t for t in plan.trials if (axis.labels and t.tags.get(key) == str(value))
                 or (not axis.labels and t.choices[key] == value)]
        if not match:
            shown = axis.labels or [as_tag(v) for v in axis.values]
            errors.append((f"baseline.{key}", f"{value!r} is not one of the axis's values: {', '.join(map(str, shown))}"))
            continue
        out.update({leaf: match[0].tags[leaf] for leaf in ([key] if axis.labels else axis.leaves)})
    return out
