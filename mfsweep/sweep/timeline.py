"""Where a study's slot time goes, seen from the driver: when each trial held a slot, how long the
driver spent in mfsweep's Tune callbacks, and the idle slot time split by phase.

``SlotTimeline`` is filled by the Tune callback (``events.ForwardingCallback``): a trial holds a slot
from the driver's ``on_trial_start`` to its ``on_trial_complete`` / ``on_trial_error`` (a retry keeps
the first start). Clock: ``time.perf_counter`` of the driver, relative to ``t0`` (just before
``Tuner.fit``).

``slot_breakdown`` splits ``wall × slots`` into the time trials held slots and the idle slot time,
∫ (slots − running(t)) dt, in three phases: before the first trial started (Ray starting workers,
the first placement), between the first and the last trial start (scheduling gaps between a trial's
end and the next one's start: result hand-off, callbacks, actor reuse), and after the last start
(the tail: nothing left to start while the last trials finish; then Tune's shutdown).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class SlotTimeline:
    t0: float = field(default_factory=time.perf_counter)
    spans: dict[str, list[float]] = field(default_factory=dict)  # trial id → [start, end] (s after t0)
    callback_s: dict[str, float] = field(default_factory=dict)  # callback name → driver seconds in it

    def started(self, trial: str, at: float) -> None:
        self.spans.setdefault(trial, [at - self.t0, float("nan")])

    def ended(self, trial: str, at: float) -> None:
        span = self.spans.setdefault(trial, [0.0, float("nan")])
        span[1] = at - self.t0

    def called(self, name: str, seconds: float) -> None:
        self.callback_s[name] = self.callback_s.get(name, 0.0) + seconds


def slot_breakdown(spans: Iterable[Sequence[float]], wall_s: float, slots: int) -> dict[str, float]:
    """``in_trials_s``: Σ slot-seconds held by trials (running trials capped at ``slots``);
    ``idle_before_first_s`` / ``idle_between_s`` / ``idle_tail_s``: idle slot-seconds in [0, first
    start), [first start, last start), [last start, wall]. The four add up to ``wall_s × slots``.
    ``spans``: [start, end] pairs (``SlotTimeline.spans.values()``); a span with no end (still
    running when the study stopped) ends at ``wall_s``."""
    intervals = []
    for start, end in spans:
        start = min(max(0.0, start), wall_s)
        end = wall_s if end != end else min(max(start, end), wall_s)  # NaN: not ended
        intervals.append((start, end))
    if not intervals:
        return {"in_trials_s": 0.0, "idle_before_first_s": wall_s * slots, "idle_between_s": 0.0, "idle_tail_s": 0.0}
    first = min(s for s, _ in intervals)
    last = max(s for s, _ in intervals)
    cuts = sorted({0.0, wall_s, first, last, *(p for iv in intervals for p in iv)})
    out = {"in_trials_s": 0.0, "idle_before_first_s": 0.0, "idle_between_s": 0.0, "idle_tail_s": 0.0}
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            continue
        mid = (a + b) / 2
        running = min(slots, sum(s <= mid < e for s, e in intervals))
        out["in_trials_s"] += running * (b - a)
        phase = "idle_before_first_s" if mid < first else "idle_between_s" if mid < last else "idle_tail_s"
        out[phase] += (slots - running) * (b - a)
    return out
