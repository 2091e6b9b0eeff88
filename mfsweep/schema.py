"""Names shared by the writer of a study's MLflow runs (``mfsweep.sweep.tracking``) and its reader
(``analysis/``): metric keys and MLflow filter quoting. Standard library only, so ``analysis/``
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


def metric_key(metric: str, nfe: int) -> str:
    return f"{metric}/nfe_{int(nfe)}"


def quote(value: str) -> str:
    """``value`` escaped for a single-quoted string in an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
