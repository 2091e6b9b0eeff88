"""mfsweep: MeanFlow ablation studies (Geng et al. 2025, arXiv 2505.13447) as one command.

The package is split into wings by layer; imports only go down (docs/architecture.md):

    cli         every command and the exit codes
    sweep/      study file → plan → Ray Tune → MLflow (the only wing that imports Ray / MLflow)
    training/   the explicit training loop, checkpoints, sample pictures (pure torch)
    config      the typed trial config
    evaluation/ metric versus NFE; metrics/
    methods/    the training methods (MeanFlow), (t, r) samplers, few-step sampling
    models/     the backbone registry (net(z, r, t, y) -> u)
    data/       the dataset registry

The names below are imported on first use, so ``import mfsweep`` does not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "MeanFlowLoss": "mfsweep.methods.meanflow",
    "meanflow_target": "mfsweep.methods.meanflow",
    "make_time_grid": "mfsweep.methods.sampling",
    "sample": "mfsweep.methods.sampling",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mfsweep' has no attribute {name!r}")
