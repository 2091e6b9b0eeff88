"""Study axes: which dotted keys exist in the trial schema, what an axis is (grid values, labelled
values or a distribution), how its values are drawn, labelled in trial ids and reported as MLflow
``axis.<key>`` tags.

An axis value that is a mapping (e.g. ``meanflow.time_sampler: [{name: uniform}, {name:
logit_normal, mu: -0.4}]``) is *merged* into the base config at that key. It is reported as the
leaf keys it actually changes (here ``meanflow.time_sampler.name``), so every ``axis.*`` tag is a
scalar of the trial schema and matches the paper's tables (analysis/paper.py).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from mfsweep.config import TrialConfig, flatten

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")

#: Keys a study may not sweep as axes: the seed has its own list, the name is the trial id.
RESERVED = {"seed": "use the study's `seeds:` list (it becomes the axis named seed)",
            "name": "each trial is named after its trial id"}


def _model_of(annotation) -> type[BaseModel] | None:
    """The sub-config model of a field: ``X`` or an optional ``X | None`` (a method's block)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def schema_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the trial schema → whether it is a sub-config (mapping)."""
    out: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        out[prefix + name] = sub is not None
        if sub is not None:
            out.update(schema_keys(sub, prefix + name + "."))
    return out


def check_axis_key(key: str) -> str | None:
    """None if ``key`` can be swept, else a message (with close matches for a typo)."""
    if key in RESERVED:
        return f"{key!r} cannot be an axis: {RESERVED[key]}"
    keys = schema_keys()
    if key in keys:
        return None
    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.75)
    if not close:  # a typo in the last part only, e.g. meanflow.frac_r_ne_t
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def as_tag(value: Any) -> str:
    """How an axis value is written in an ``axis.*`` tag and the trial table."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return ",".join(f"{k}={as_tag(v)}" for k, v in value.items())
    return str(value)


def varying_leaves(key: str, configs: list[TrialConfig]) -> list[str]:
    """The leaf keys under ``key`` whose resolved values differ between ``configs``."""
    flats = [{k: v for k, v in flatten(c).items() if k == key or k.startswith(key + ".")} for c in configs]
    leaves = list(flats[0]) if flats else []
    varying = [leaf for leaf in leaves if len({as_tag(f.get(leaf)) for f in flats}) > 1]
    return varying or ([key] if key in leaves else leaves[:1])


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def id_label(value: Any) -> str:
    """A short, file-name-safe label of one axis value for trial ids (mappings: their name)."""
    if isinstance(value, dict) and "name" in value:
        text = str(value["name"])
    elif isinstance(value, (list, tuple)):
        text = ",".join(as_tag(v) for v in value)
    else:
        text = as_tag(value)
    return _UNSAFE.sub("_", text).strip("_") or "_"


def trial_id(index: int, parts: list[tuple[str, Any]], seed: int, max_len: int = 120) -> str:
    """Deterministic trial id, e.g. ``t003-frac_r_neq_t=0.25-seed=1``."""
    body = "-".join(f"{name}={id_label(v)}" for name, v in parts)
    text = f"t{index:03d}" + (f"-{body}" if body else "")
    tail = f"-seed={seed}"
    return text[: max_len - len(tail)] + tail


def is_distribution(spec: Any) -> bool:
    """``{uniform: [lo, hi]}`` and friends (a one-key mapping named after a distribution)."""
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS


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


def choice_labels(values: list[Any]) -> list[Any]:
    """Values a search algorithm can hold: scalars as they are, mappings / lists as strings."""
    if all(isinstance(v, (str, int, float, bool)) for v in values):
        return list(values)
    return [as_tag(v) for v in values]


def round_value(v: Any) -> Any:
    return float(f"{v:.6g}") if isinstance(v, float) else v


def parse_axes(spec_by_key: dict[str, Any], algorithm: str) -> list[Axis]:
    """The study's ``axes:`` mapping (already checked by ``checks.axis_errors``) as Axis objects."""
    axes = []
    for key, spec in spec_by_key.items():
        kind = "grid" if algorithm == "grid" else "choice"
        if isinstance(spec, list):
            axes.append(Axis(key, list(spec), kind))
        elif not is_distribution(spec):  # labelled values
            axes.append(Axis(key, list(spec.values()), kind, labels=[str(k) for k in spec]))
        else:
            kind, arg = next(iter(spec.items()))
            axes.append(Axis(key, list(arg), kind) if kind == "choice" else Axis(key, None, kind, tuple(arg)))
    return axes


def draw(axis: Axis, rng: np.random.Generator) -> Any:
    if axis.values is not None:
        return axis.values[int(rng.integers(len(axis.values)))]
    lo, hi = axis.bounds
    if axis.kind == "int":
        return int(rng.integers(int(lo), int(hi) + 1))
    if axis.kind == "loguniform":
        return round_value(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return round_value(float(rng.uniform(lo, hi)))
