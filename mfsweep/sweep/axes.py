"""Study axes: which dotted keys exist in the trial schema, how axis values are merged into a trial
config, labelled in trial ids and reported as MLflow ``axis.<key>`` tags.

An axis value that is a mapping (e.g. ``meanflow.time_sampler: [{name: uniform}, {name:
logit_normal, mu: -0.4}]``) is *merged* into the base config at that key. It is reported as the
leaf keys it actually changes (here ``meanflow.time_sampler.name``), so every ``axis.*`` tag is a
scalar of the trial schema and matches the paper's tables (analysis/paper.py).
"""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any

from pydantic import BaseModel

from mfsweep.config import TrialConfig, flatten

#: Keys a study may not sweep as axes: the seed has its own list, the name is the trial id.
RESERVED = {"seed": "use the study's `seeds:` list (it becomes the axis named seed)",
            "name": "each trial is named after its trial id"}


def _model_of(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


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


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings recursively, anything else replaced (copied)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(out.get(k), v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def set_axis(raw: dict, key: str, value: Any) -> None:
    """Put one axis value into a raw trial config (mappings merge into what is there)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    leaf = parts[-1]
    node[leaf] = deep_merge(node[leaf], value) if isinstance(node.get(leaf), dict) else copy.deepcopy(value)


def get_dotted(cfg: BaseModel | dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


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


def short_name(key: str, all_keys: list[str]) -> str:
    """Last dotted part of ``key``, or the full key when two axes share that last part."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in all_keys) == 1 else key


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
