"""The sweep wing: study file → plan → Ray Tune → MLflow (study, axes, checks, plan, tune, searchers,
tracking, events, runner). The only part of mfsweep that imports Ray, MLflow or Optuna."""
