"""Checkpoints: the last two are kept, each written whole or not at all; loaded with ``weights_only=True``.

Layout in a training folder: ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt`` (the one
before). ``save_atomic`` writes the new file to a temporary name (flushed and fsynced), then renames
the current ``checkpoint.pt`` to ``checkpoint.prev.pt`` and the new file to ``checkpoint.pt``: at
every instant at least one complete checkpoint exists, whatever kills the process.

``load_for_resume`` is what resuming uses. A checkpoint is usable when it is a readable zip whose
CRC-32 sums match (torch writes them; a bit flipped on disk loads without complaint otherwise),
``torch.load(..., weights_only=True)`` accepts it (a pickle that would build arbitrary objects is
refused) and it holds every key training needs. An unusable ``checkpoint.pt`` gives one warning
line naming the file and the reason, is renamed ``checkpoint.pt.corrupt`` (kept for inspection, and
so the next save does not rotate it over the good previous one) and ``checkpoint.prev.pt`` is used.
When neither is usable, ``CheckpointError`` (a ``DataError``: ``mfsweep train`` exits 2 with the
message; a Tune trial fails with it) names both files and reasons. Training does *not* silently
start again from step 0 then: that would throw away the run's progress and overwrite its files
without anyone deciding so; deleting the files (as the message says) starts it afresh.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import torch

from mfsweep.data import DataError

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
CORRUPT_SUFFIX = ".corrupt"
#: What ``mfsweep.training.train.train`` needs to continue a run.
REQUIRED_KEYS = frozenset({"step", "config", "model", "ema", "opt", "sched", "gen_batch", "gen_noise"})

log = logging.getLogger(__name__)


class CheckpointError(DataError):
    """No usable checkpoint to resume from (both files truncated, corrupt or refused)."""


def previous_path(path: str | Path) -> Path:
    """``checkpoint.prev.pt`` next to ``path``."""
    return Path(path).with_name(PREVIOUS_NAME)


def _rotate_in(tmp: Path, path: Path) -> None:
    """``path`` → ``checkpoint.prev.pt``, then ``tmp`` → ``path`` (both renames atomic)."""
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_atomic(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path``; the checkpoint it replaces becomes ``checkpoint.prev.pt``."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _rotate_in(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def install(src: str | Path, path: str | Path) -> Path:
    """Copy the checkpoint ``src`` (e.g. restored by Ray Tune) to ``path``, rotating like ``save_atomic``."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 24):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        _rotate_in(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    """``torch.load`` with ``weights_only=True`` (no arbitrary objects are unpickled); no checks."""
    return torch.load(path, map_location=map_location, weights_only=True)


def check(path: str | Path, map_location="cpu") -> tuple[dict | None, str]:
    """``(state, "")`` if ``path`` is a usable checkpoint, else ``(None, reason)``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            return None, f"checksum mismatch in {bad!r} (the file was damaged after it was written)"
        state = load(path, map_location)
    except FileNotFoundError:
        return None, "missing"
    except zipfile.BadZipFile as exc:
        return None, f"truncated or not a torch checkpoint ({exc})"
    except Exception as exc:  # torch / unpickler errors, including weights_only refusals
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"torch.load failed: {type(exc).__name__}: {first}"
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a checkpoint dict"
    missing = sorted(REQUIRED_KEYS - state.keys())
    if missing:
        return None, f"missing keys {missing}"
    return state, ""


def usable_step(path: str | Path) -> int | None:
    """The step of the checkpoint ``load_for_resume(path)`` would use (None: none usable); no side effects."""
    for p in (Path(path), previous_path(path)):
        if p.exists():
            state, _ = check(p)
            if state is not None:
                return int(state["step"])
    return None


def load_for_resume(path: str | Path, map_location="cpu") -> dict | None:
    """The newest usable checkpoint of ``path`` and ``checkpoint.prev.pt``; None when neither exists.

    An unusable ``path`` is reported (warning), renamed ``*.corrupt`` and the previous one is used;
    ``CheckpointError`` when files exist but none is usable.
    """
    path = Path(path)
    reasons = []
    for p in (path, previous_path(path)):
        if not p.exists():
            continue
        state, reason = check(p, map_location)
        if state is None:
            reasons.append((p, reason))
            continue
        if reasons:  # checkpoint.pt is damaged: set it aside, use the previous one
            kept = path.with_name(path.name + CORRUPT_SUFFIX)
            os.replace(path, kept)
            log.warning("checkpoint %s is unusable (%s): resuming from %s at step %d instead; the damaged file "
                        "is kept as %s", path, reasons[0][1], p, int(state["step"]), kept.name)
        return state
    if not reasons:
        return None
    raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(f"{f}: {r}" for f, r in reasons)
                          + f". Delete the checkpoint files in {path.parent} to start this run again from step 0")
