"""Names shared by the writer of a study's MLflow runs (``mfsweep.sweep.tracking``) and its reader
(``analysis/``): metric keys, MLflow filter quoting and the short names of axis keys. Standard library only, so ``analysis/``
can import it without loading torch, Ray or the training code (schema: docs/architecture.md).

A metric value is identified by (metric, NFE); its key is ``{metric}/nfe_{k}`` (``swd/nfe_1``);
logged in MLflow with a phase in front: ``eval/swd/nfe_1`` (periodic), ``final/swd/nfe_1`` (end).
"""

from __future__ import annotations

import re

_NAME = r"[A-Za-z0-9_]+"
#: ``{metric}/nfe_{k}``; groups: metric, k.
METRIC_KEY = re.compile(rf"^({_NAME})/nfe_(\d+)$")
#: ``{phase}/{metric}/nfe_{k}`` with phase ``eval`` or ``final``; groups: phase, metric, k.
LOGGED_METRIC_KEY = re.compile(rf"^(final|eval)/({_NAME})/nfe_(\d+)$")

#: Metrics for which a larger value is better (every other metric: lower is better). Must agree with
#: ``MetricSpec.higher_is_better`` of ``mfsweep.evaluation.metrics.METRICS`` (tests check it); the
#: reports (``analysis/``) read it to bold the best cell and to label axes.
HIGHER_IS_BETTER = frozenset({"precision", "recall", "inception_score"})


def metric_key(metric: str, nfe: int) -> str:
    return f"{metric}/nfe_{int(nfe)}"


def _last(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def short_axis_name(key: str, all_keys: list[str]) -> str:
    """How an axis is named in trial ids, tables and plot legends: its last dotted part, or the one
    before a final ``name`` (``method.name`` → ``method``), or the full key when two axes of
    ``all_keys`` would share that short name."""
    last = _last(key)
    return last if sum(_last(k) == last for k in all_keys) == 1 else key


def quote(value: str) -> str:
    """``value`` escaped for a single-quoted string in an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
