"""One `mfsweep run` per study at a time: an OS file lock in the study's storage folder.

``<storage>/<study>/.lock`` is locked with ``flock`` for as long as the driver runs the study. The
kernel releases the lock when the holding process exits, however it dies (SIGKILL included), so a
stale lock never blocks a rerun; the file itself stays and only carries the holder's pid, host and
start time for the message a second driver prints. Storage given as a URI (s3://, gs://) cannot be
locked this way: there the lock is skipped (documented in docs/reliability.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from mfsweep.config import ConfigError

LOCK_NAME = ".lock"


class StudyBusy(ConfigError):
    """Another live process holds the study's lock (exit 2, one line)."""

    def __init__(self, study: str, holder: dict, path: Path):
        self.errors, self.source, self.holder = [("", "locked")], f"study {study}", holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
               if holder else "another process")
        ValueError.__init__(self, f"study {study!r} is already running ({who}; lock {path}): wait for it to "
                                  "end or stop it, then rerun")


class StudyLock:
    """The held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int | None, path: Path | None, created: bool = False):
        self.fd, self.path, self.created = fd, path, created

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
            # this run made the study folder and wrote nothing else (refused input): leave no trace
            self.path.unlink()
            self.path.parent.rmdir()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    """What the holder wrote (it may be mid-write: a few short tries)."""
    for _ in range(10):
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            return json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError):
            time.sleep(0.05)
    return {}


def acquire(study_dir: str, study: str) -> StudyLock:
    """Lock ``<study_dir>/.lock`` (created with its folder) or raise StudyBusy naming the holder.
    A URI ``study_dir`` (s3://...) is not locked (returns a no-op lock)."""
    if "://" in study_dir:
        return StudyLock(None, None)
    path = Path(study_dir) / LOCK_NAME
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StudyBusy(study, holder, path) from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return StudyLock(fd, path, created)
