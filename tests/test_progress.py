"""The live study status line: bookkeeping with a fake clock, plain lines off a terminal, one
updating line on a (pseudo-)terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from mfsweep.sweep.progress import ProgressDisplay, StudyProgress, format_seconds


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_counts_eta_and_best_follow_the_events():
    clock = Clock()
    p = StudyProgress(6, "swd/nfe_1", "min", clock=clock)
    assert p.line().startswith("trials 0/6 · 0 finished, 0 stopped, 0 failed · 0 running · 6 pending · 0s elapsed · ETA —")
    p.started("t000")
    p.started("t001")
    clock.t += 30
    p.ended("t000", "finished", 0.5)
    p.started("t002")
    clock.t += 30
    p.ended("t001", "stopped", None)
    p.ended("t002", "failed")
    # durations 30, 60, 30 (mean 40), 3 pending, 0 running, at most 2 at once → 40 · 3 / 2
    assert p.eta() == pytest.approx(60.0)
    assert (p.done, p.pending, p.count("running")) == (3, 3, 0)
    line = p.line()
    assert "trials 3/6 · 1 finished, 1 stopped, 1 failed · 0 running · 3 pending · 1m00s elapsed" in line
    assert "ETA ~1m00s" in line and "best swd/nfe_1 0.5 (t000)" in line
    p.started("t003")
    clock.t += 10
    p.ended("t003", "finished", 0.2)
    p.ended("t004", "finished", float("nan"))  # NaN never becomes the best
    assert p.best == (0.2, "t003")
    hi = StudyProgress(2, "recall/nfe_1", "max", clock=clock)
    hi.already_done("t0", "finished", 0.4)
    hi.already_done("t1", "finished", 0.9)
    assert hi.best == (0.9, "t1") and hi.done == 2 and hi.pending == 0 and hi.eta() is None  # resumed: not timed


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 8.4, 72.4, 3725)] == ["0s", "8s", "1m12s", "1h02m"]


def test_off_a_terminal_a_plain_line_after_each_trial_end_and_no_escape_codes():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    p = StudyProgress(2, "swd/nfe_1", clock=Clock())
    with ProgressDisplay(p, console) as d:
        assert not d.tty
        p.started("t000")
        d.update(ended=False)
        p.ended("t000", "finished", 0.3)
        d.update(ended=True)
    out = buf.getvalue()
    assert out.count("trials ") == 1 and "trials 1/2 · 1 finished" in out
    assert "\x1b[" not in out


LIVE_SCRIPT = textwrap.dedent("""
    import time
    from rich.console import Console
    from mfsweep.sweep.progress import ProgressDisplay, StudyProgress
    console = Console()
    print("terminal" if console.is_terminal else "not a terminal", flush=True)
    p = StudyProgress(3, "swd/nfe_1")
    with ProgressDisplay(p, console) as d:
        for i in range(3):
            p.started(f"t00{i}"); d.update(False)
            console.print(f"started t00{i}")
            time.sleep(0.3)
            p.ended(f"t00{i}", "finished", 1.0 - i / 10); d.update(True)
""")


def test_on_a_pseudo_terminal_one_line_updates_in_place():
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("CI", None)  # rich treats CI as a non-interactive terminal
    proc = subprocess.Popen([sys.executable, "-c", LIVE_SCRIPT], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + 60
    while time.time() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    assert out.startswith("terminal")
    assert "\x1b[" in out  # cursor movement: the line is redrawn, not appended
    assert "trials 3/3 · 3 finished, 0 stopped, 0 failed · 0 running · 0 pending" in out
    assert "best swd/nfe_1 0.8 (t002)" in out
    assert "started t002" in out  # per-trial lines still print above the live line
