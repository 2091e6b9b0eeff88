"""Named registries: each ablation axis is a name in a config, looked up in one of these.

A ``Registry`` maps names to objects. An entry may be given as ``lazy("package.module:attr")``: the
module is imported on first lookup, so listing or validating names (``mfsweep validate``) never
imports torch, and a backbone that is not used is never imported. An unknown name raises one error
format everywhere: ``unknown <kind> 'name'; valid: a, b, c`` (names sorted).

The registries: time samplers, tangents, time grids (``mfsweep.methods``), time embeddings and
backbones (``mfsweep.models``), datasets (``mfsweep.data``) and metrics
(``mfsweep.evaluation.metrics``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class lazy:  # noqa: N801 (reads like a function at the registration site)
    """An entry imported on first lookup: ``lazy("mfsweep.models.mlp:from_config")``."""

    path: str

    def resolve(self) -> Any:
        module, _, attr = self.path.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


class Registry(Mapping[str, Any]):
    """A read-only name → object mapping with one error message for unknown names.

    ``kind`` names what is registered ("backbone", "time sampler", ...); ``error`` is the exception
    type raised for an unknown name (a ``ValueError`` subclass).
    """

    def __init__(self, kind: str, entries: Mapping[str, Any], error: type[ValueError] = ValueError):
        self.kind = kind
        self._entries = dict(entries)
        self._error = error

    # Mapping: iteration and membership never import anything.
    def __getitem__(self, name: str) -> Any:
        value = self._entries[name]
        if isinstance(value, lazy):
            value = self._entries[name] = value.resolve()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"

    def message(self, name: Any) -> str:
        return f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}"

    def check(self, name: str) -> str:
        """``name`` if registered (nothing is imported), else the registry's error."""
        if name not in self._entries:
            raise self._error(self.message(name))
        return name

    def lookup(self, name: str) -> Any:
        """The object registered as ``name`` (imported on first use), else the registry's error."""
        return self[self.check(name)]
