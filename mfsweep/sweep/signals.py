"""SIGTERM on the driver → the same graceful stop as Ctrl+C (SIGINT).

Ray Tune (2.60) handles SIGINT itself while ``Tuner.fit`` runs: the first one stops the trials,
saves the experiment state one last time and makes ``fit`` return; it registers the same handler
for SIGUSR1, but leaves SIGTERM to Python's default, which kills the driver on the spot (the
experiment state of the last few seconds and the MLflow runs' statuses are lost: runs stay
RUNNING). ``graceful_stop`` turns SIGTERM into that same stop while it is active, and remembers
which signal came, so ``mfsweep run`` exits 143 (128 + SIGTERM) instead of 130. Outside
``Tuner.fit`` (before Tune installed its handler) SIGTERM raises ``KeyboardInterrupt`` there, which
the runner treats as an interruption too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class StopSignal:
    name: str = ""  # "SIGTERM" once one arrived


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopSignal]:
    caught = StopSignal()
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield caught
        return

    previous_usr1 = signal.getsignal(signal.SIGUSR1)

    def on_sigterm(signum, frame):
        caught.name = "SIGTERM"
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's stop handler once fit() installed it
        if callable(tune_stop) and tune_stop is not previous_usr1:
            tune_stop(signum, frame)
        else:
            raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGUSR1, previous_usr1)  # Tune leaves its handler installed after fit()
