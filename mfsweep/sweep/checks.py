"""Error-path mapping: every problem in a study is reported against what the user wrote, all at once.

``axes.meanflow.frac_r_neq_t[2]`` for a bad axis value, ``axes.train.lr.loguniform`` for a bad
distribution, ``trial t005-...`` for a bad combination, ``base.`` / ``eval.`` for the shared parts,
``search.metric`` for a metric that is not computed. Functions append ``(path, message)`` pairs to
a list; ``mfsweep.sweep.plan.make_plan`` raises them as one ``ConfigError``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mfsweep.config import ConfigError, TrialConfig, load_trial_config
from mfsweep.evaluation.metrics import METRICS
from mfsweep.schema import METRIC_KEY
from mfsweep.sweep.axes import Axis, check_axis_key, is_distribution


def axis_errors(axes: Any, algorithm: str) -> list[tuple[str, str]]:
    """Shape checks of ``axes``: known keys, non-empty lists, well-formed distributions."""
    if not isinstance(axes, dict):
        return [("axes", f"expected a mapping of dotted config keys, got {type(axes).__name__}")]
    errors = []
    for key, spec in axes.items():
        path = f"axes.{key}"
        if (msg := check_axis_key(str(key))) is not None:
            errors.append((path, msg))
        if isinstance(spec, list):
            if not spec:
                errors.append((path, "empty list of values"))
            elif len({json.dumps(v, sort_keys=True, default=str) for v in spec}) != len(spec):
                errors.append((path, "repeated values (a grid cell would run twice)"))
        elif is_distribution(spec):
            errors += _distribution_errors(path, spec, algorithm)
        elif isinstance(spec, dict) and spec:  # labelled values {label: value}
            errors += [(f"{path}.{label}", "a label must be a non-empty string of letters, digits, . _ + -")
                       for label in spec if not (isinstance(label, str) and re.fullmatch(r"[A-Za-z0-9._+-]+", label))]
        else:
            errors.append((path, "expected a list of values (grid), labelled values {label: value, ...}, or one of "
                                 "{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {int: [lo, hi]}, {choice: [...]}"))
    return errors


def _distribution_errors(path: str, spec: dict, algorithm: str) -> list[tuple[str, str]]:
    kind, arg = next(iter(spec.items()))
    path = f"{path}.{kind}"
    if algorithm == "grid":
        return [(path, "a distribution needs search.algorithm random or optuna (grid takes a list of values)")]
    if kind == "choice":
        return [] if isinstance(arg, list) and arg else [(path, "expected a non-empty list of values")]
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in arg)):
        return [(path, f"expected [lo, hi] numbers, got {arg!r}")]
    lo, hi = arg
    if not lo < hi:
        return [(path, f"need lo < hi, got [{lo}, {hi}]")]
    if kind == "loguniform" and lo <= 0:
        return [(path, f"loguniform needs 0 < lo, got {lo}")]
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        return [(path, f"int bounds must be integers, got [{lo}, {hi}]")]
    return []


def probe_values(axis: Axis) -> list[tuple[str, Any]]:
    """(error path, value) pairs that stand for the axis when validating it alone."""
    if axis.labels:
        return [(f"axes.{axis.key}.{label}", v) for label, v in zip(axis.labels, axis.values)]
    if axis.values is not None:
        return [(f"axes.{axis.key}[{i}]" if axis.kind == "grid" else f"axes.{axis.key}.choice[{i}]", v)
                for i, v in enumerate(axis.values)]
    lo, hi = axis.bounds
    cast = int if axis.kind == "int" else float
    return [(f"axes.{axis.key}.{axis.kind}", cast(lo)), (f"axes.{axis.key}.{axis.kind}", cast(hi))]


def validate_into(raw: dict, errors: list, source: str, path: str | None = None, prefix: str = "",
              axis_key: str = "") -> TrialConfig | None:
    """Validate one raw trial config, appending its errors to ``errors``: at ``path`` (the message names the key unless it is
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
    if base.pop("name", None) is not None:
        errors.append(("base.name", "each trial is named after its trial id; name the study with the top-level `name:`"))
    validate_into({**base, "seed": 0, "name": "base"}, errors, "base", prefix="base.")
    if isinstance(eval_overrides, dict):
        validate_into({"eval": eval_overrides}, errors, "eval")  # paths come out as eval.<key>, as written
    return errors


def axis_value_errors(axes: dict, algorithm: str, base: Any, eval_overrides: Any,
                      base_errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Errors of each axis value (as ``make_plan`` probes them) when the base itself has errors, so
    that ``validate`` lists both at once: each value is merged into the base, and an error the base
    has on its own is left out unless the value itself sits at that key."""
    import copy

    from mfsweep.config import set_dotted
    from mfsweep.sweep.axes import parse_axes

    if not isinstance(base, dict) or not isinstance(axes, dict):
        return []
    base_raw = {k: v for k, v in base.items() if k not in ("seed", "name")}
    if isinstance(eval_overrides, dict) and eval_overrides:
        ev = base_raw.get("eval")
        base_raw["eval"] = {**ev, **eval_overrides} if isinstance(ev, dict) else dict(eval_overrides)
    own = {("" if path == "base" else path.removeprefix("base."), msg) for path, msg in base_errors}
    errors: list[tuple[str, str]] = []
    for axis in parse_axes(axes, algorithm):
        for path, value in probe_values(axis):
            raw = copy.deepcopy({**base_raw, "seed": 0, "name": "probe"})
            try:
                set_dotted(raw, axis.key, value, merge=True, source="axes")
            except ConfigError:  # a non-mapping on the way: the base's own error says so
                continue
            try:
                load_trial_config(raw, source="probe")
            except ConfigError as exc:
                for inner, msg in exc.errors:
                    at_value = inner == axis.key or (inner.startswith(axis.key + ".") and not isinstance(value, dict))
                    if (inner, msg) in own and not at_value:
                        continue
                    errors.append((path, msg if inner in ("", axis.key) else f"{inner}: {msg}"))
    return errors


def check_metric(plan, errors: list) -> None:
    """The search / scheduler metric of a ``StudyPlan``: well-formed, computed, evaluated."""
    study, base = plan.study, plan.base_config
    needs = study.search.algorithm == "optuna" or study.scheduler.name == "asha"
    for path, metric in (("search.metric", study.search.metric), ("scheduler.metric", study.scheduler.metric)):
        if metric is None:
            continue
        m = METRIC_KEY.match(metric)
        if not m or m.group(1) not in METRICS:
            errors.append((path, f"expected '{{metric}}/nfe_{{k}}' with metric in {', '.join(METRICS)}, got {metric!r}"))
        elif int(m.group(2)) not in base.eval.nfe:
            errors.append((path, f"NFE {m.group(2)} is not evaluated; eval.nfe is {base.eval.nfe}"))
        elif base.eval.metrics is not None and m.group(1) not in base.eval.metrics:
            errors.append((path, f"metric {m.group(1)!r} is not computed; eval.metrics is {base.eval.metrics}"))
    if needs and plan.metric is None:
        errors.append(("search.metric", "set the metric to optimise, e.g. swd/nfe_1"))
    # a higher-is-better metric (precision, recall, inception_score) optimised the wrong way round
    for path, used, metric, mode in (
            ("search.mode", study.search.algorithm == "optuna", plan.metric, study.search.mode),
            ("scheduler.mode", study.scheduler.name == "asha", study.scheduler.metric or plan.metric,
             study.scheduler.mode or study.search.mode)):
        m = METRIC_KEY.match(metric or "")
        if used and m and m.group(1) in METRICS and METRICS.lookup(m.group(1)).higher_is_better and mode != "max":
            errors.append((path, f"metric {metric!r} is higher-is-better; set {path}: max"))
    if study.scheduler.name == "asha":
        if not 0 < base.eval.every_steps < base.train.steps:
            errors.append(("scheduler.name", "asha stops trials on the periodic evaluation: "
                                             f"set 0 < eval.every_steps < train.steps ({base.train.steps})"))
        if study.scheduler.grace_period >= (study.scheduler.max_t or base.train.steps):
            errors.append(("scheduler.grace_period", "must be below max_t (default: train.steps)"))


def check_files(cfg: TrialConfig, path: str, errors: list) -> None:
    if cfg.data.name == "npy" and cfg.data.path and not Path(cfg.data.path).expanduser().is_file():
        errors.append((path, f"data.path: file not found: {cfg.data.path}"))


def dedupe(errors: list) -> list:
    seen, out = set(), []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out
