"""A study you can watch: counts, elapsed, ETA and the best metric so far, in one status line.

``StudyProgress`` is plain bookkeeping (no Ray, no terminal): the event handler tells it when a
trial starts and ends, and ``line()`` renders

    trials 5/16 · 4 finished, 1 stopped, 0 failed · 2 running · 9 pending · 1m12s elapsed ·
    ETA ~2m30s · best swd/nfe_1 0.1183 (t003-…)

ETA: the mean wall time of the trials that ended in this execution × the trials still to start
plus half of the running ones, divided by the number of trials seen running at once (at least 1);
"ETA —" until a trial has ended. ``ProgressDisplay`` shows the line: on a terminal as one updating
line under the per-trial lines (``rich.live.Live``, refreshed every second so elapsed moves);
otherwise (CI logs, pipes) as a plain line printed after each trial ends.
"""

from __future__ import annotations

import math
import time
from typing import Callable

DONE = ("finished", "stopped", "failed", "diverged")


def format_seconds(s: float) -> str:
    """72.4 → '1m12s'; 3725 → '1h02m'; 8 → '8s'."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class StudyProgress:
    """Counts of a study's trials by state, their durations and the best metric value.

    ``total``: trials this execution will run (plan trials, or the search's num_samples);
    ``metric`` / ``mode``: what "best" means; ``clock``: injectable for tests.
    """

    def __init__(self, total: int, metric: str | None = None, mode: str = "min",
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.metric, self.mode, self.clock = int(total), metric, mode, clock
        self.t0 = clock()
        self.status: dict[str, str] = {}  # trial id → running | finished | stopped | failed | diverged
        self._started: dict[str, float] = {}
        self.durations: list[float] = []
        self.max_running = 0
        self.best: tuple[float, str] | None = None

    def already_done(self, trial_id: str, status: str, value: float | None = None) -> None:
        """A trial that ended before this execution (a resumed study): counted, not timed."""
        if status in DONE:
            self.status[trial_id] = status
            self._offer(trial_id, value)

    def started(self, trial_id: str) -> None:
        self.status[trial_id] = "running"
        self._started[trial_id] = self.clock()
        self.max_running = max(self.max_running, self.count("running"))

    def ended(self, trial_id: str, status: str, value: float | None = None) -> None:
        self.status[trial_id] = status if status in DONE else "failed"
        if trial_id in self._started:
            self.durations.append(self.clock() - self._started.pop(trial_id))
        self._offer(trial_id, value)

    def _offer(self, trial_id: str, value: float | None) -> None:
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (float(value), trial_id)

    def count(self, state: str) -> int:
        return sum(s == state for s in self.status.values())

    @property
    def done(self) -> int:
        return sum(s in DONE for s in self.status.values())

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.count("running"))

    def eta(self) -> float | None:
        """Seconds left (see the module docstring); None before any trial has ended in this run."""
        if not self.durations:
            return None
        left = self.pending + 0.5 * self.count("running")
        return sum(self.durations) / len(self.durations) * left / max(1, self.max_running)

    def line(self) -> str:
        eta = self.eta()
        failed = self.count("failed") + self.count("diverged")
        parts = [f"trials {self.done}/{self.total}",
                 f"{self.count('finished')} finished, {self.count('stopped')} stopped, {failed} failed",
                 f"{self.count('running')} running", f"{self.pending} pending",
                 f"{format_seconds(self.clock() - self.t0)} elapsed",
                 "ETA —" if eta is None else ("ETA 0s" if eta == 0 else f"ETA ~{format_seconds(eta)}")]
        if self.metric:
            parts.append(f"best {self.metric} —" if self.best is None else
                         f"best {self.metric} {self.best[0]:.4g} ({self.best[1]})")
        return " · ".join(parts)


class ProgressDisplay:
    """Shows a StudyProgress on a rich console: a live line on a terminal, plain lines otherwise."""

    def __init__(self, progress: StudyProgress, console):
        self.progress, self.console = progress, console
        self.live = None
        self.tty = bool(console is not None and console.is_terminal)

    def __enter__(self) -> ProgressDisplay:
        if self.tty:
            from rich.live import Live
            from rich.text import Text

            class _Line:  # re-rendered at every refresh, so "elapsed" keeps moving
                def __rich__(inner):  # noqa: N805
                    return Text(self.progress.line(), style="bold")

            self.live = Live(_Line(), console=self.console, refresh_per_second=1, transient=False)
            self.live.__enter__()
        return self

    def update(self, ended: bool) -> None:
        """After a trial event: refresh the live line, or (no terminal) print the line when a trial ended."""
        if self.live is not None:
            self.live.refresh()
        elif ended and self.console is not None:
            self.console.print(self.progress.line(), highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None
