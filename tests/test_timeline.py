"""The driver's timeline of a study (mfsweep.sweep.timeline) and the callback that fills it."""

import math
from types import SimpleNamespace

import pytest

from mfsweep.sweep import events as ev_mod
from mfsweep.sweep.timeline import SlotTimeline, slot_breakdown


def test_slot_breakdown_splits_slot_time_exactly_by_phase():
    # 2 slots, wall 10 s. a: 1→4, b: 2→6, c: 5→9 (starts after a ended at 4: 1 s gap on a slot).
    spans = {"a": [1.0, 4.0], "b": [2.0, 6.0], "c": [5.0, 9.0]}
    out = slot_breakdown(spans.values(), wall_s=10.0, slots=2)
    assert out["in_trials_s"] == pytest.approx(3 + 4 + 4)
    # before the first start (0→1): both slots idle; 1→2 one slot idle: that is "between" (after the first start)
    assert out["idle_before_first_s"] == pytest.approx(2.0)
    # between first start (1) and last start (5): 1→2 one idle, 4→5 one idle
    assert out["idle_between_s"] == pytest.approx(2.0)
    # after the last start (5): 5→6 none idle, 6→9 one idle, 9→10 two idle
    assert out["idle_tail_s"] == pytest.approx(3.0 + 2.0)
    assert sum(out.values()) == pytest.approx(10.0 * 2)


def test_slot_breakdown_caps_running_trials_at_the_slots_and_ends_open_spans_at_wall():
    # three overlapping spans on 2 slots (a retry's old and new span overlapping): at most 2 count
    out = slot_breakdown([[0.0, 4.0], [0.0, 4.0], [1.0, 3.0]], wall_s=4.0, slots=2)
    assert out["in_trials_s"] == pytest.approx(8.0) and out["idle_tail_s"] == pytest.approx(0.0)
    # a trial still running when the study stopped (no end) holds its slot until wall
    out = slot_breakdown([[2.0, math.nan]], wall_s=5.0, slots=1)
    assert out == pytest.approx({"in_trials_s": 3.0, "idle_before_first_s": 2.0, "idle_between_s": 0.0,
                                 "idle_tail_s": 0.0})
    assert slot_breakdown([], wall_s=3.0, slots=2)["idle_before_first_s"] == pytest.approx(6.0)


def test_the_forwarding_callback_notes_spans_and_time_in_callbacks(monkeypatch):
    clock = iter([10.0, 10.5, 11.0, 11.25, 14.0, 15.0, 16.0, 16.5])

    class FakeEvents:
        def __init__(self):
            self.timeline = SlotTimeline(t0=9.0)
            self.seen = []

        def spec(self, trial):  # the trial's TrialSpec; here its id is the Tune trial's name
            return SimpleNamespace(trial_id=f"id-{trial}")

        def on_trial_start(self, trial):
            self.seen.append(("start", trial))

        def on_trial_result(self, trial, result):
            self.seen.append(("result", trial, result["step"]))

        def on_trial_complete(self, trial):
            self.seen.append(("complete", trial))

        def on_trial_error(self, trial):
            raise RuntimeError("MLflow down")

    fake = FakeEvents()
    monkeypatch.setattr(ev_mod, "time", SimpleNamespace(perf_counter=lambda: next(clock)))  # this module only
    monkeypatch.setitem(ev_mod._LIVE, "events", fake)
    cb = ev_mod.ForwardingCallback()
    cb.on_trial_start(0, [], "t000")                  # 10.0 → 10.5
    cb.on_trial_result(0, [], "t000", {"step": 5})   # 11.0 → 11.25
    cb.on_trial_complete(0, [], "t000")              # 14.0 → 15.0
    with pytest.raises(RuntimeError, match="MLflow down"):
        cb.on_trial_error(0, [], "t001")             # 16.0 → 16.5: still noted
    assert fake.seen == [("start", "t000"), ("result", "t000", 5), ("complete", "t000")]
    # keyed by trial id; start and end as the driver first saw them
    assert fake.timeline.spans["id-t000"] == [1.0, 5.0]
    assert fake.timeline.spans["id-t001"][1] == pytest.approx(7.0)
    assert fake.timeline.callback_s == pytest.approx({"on_trial_start": 0.5, "on_trial_result": 0.25,
                                                      "on_trial_complete": 1.0, "on_trial_error": 0.5})
