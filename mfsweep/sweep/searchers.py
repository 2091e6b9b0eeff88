"""Search algorithms adapted to mfsweep's reports (imported on the driver only).

A trial reports training losses often and its evaluation metric only every ``eval.every_steps``
steps; Ray's OptunaSearch expects the metric in every report, so this subclass passes on only
the reports that carry it (Optuna's pruning sees the evaluations, the final value completes it).
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class EvalOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores intermediate reports without the metric."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)
