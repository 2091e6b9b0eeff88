"""Fault: a checkpoint file is truncated or corrupt → detected with a clear warning naming the file,
the previous checkpoint (``checkpoint.prev.pt``) is used; both damaged → a clear error (exit 2 for
``mfsweep train``). Checkpoints are loaded with ``weights_only=True``. No Ray process is started."""

from __future__ import annotations

import json
import logging
import pathlib

import pytest
import torch
import yaml

from mfsweep.cli import main
from mfsweep.config import load_trial_config, set_dotted
from mfsweep.training import checkpoint as ckpt
from mfsweep.training.train import train

TINY = {
    "name": "tiny",
    "data": {"name": "moons", "num_train": 512, "num_test": 256},
    "model": {"hidden_dim": 16, "depth": 1},
    "train": {"steps": 30, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "warmup_steps": 5,
              "device": "cpu"},
    "eval": {"nfe": [1], "num_samples": 64, "metrics": ["swd"]},
}


def cfg(**over):
    raw = json.loads(json.dumps(TINY))
    for key, value in over.items():  # train__steps=5 sets train.steps
        set_dotted(raw, key.replace("__", "."), value)
    return load_trial_config(raw)


class Steps:
    """TrainHooks that record the logged and checkpointed steps."""

    def __init__(self):
        self.logged, self.saved = [], []

    def on_log(self, step, metrics):
        self.logged.append(step)

    def on_eval(self, step, values, num_samples, phase):
        pass

    def on_checkpoint(self, step, path):
        self.saved.append(step)


def _step(path) -> int:
    return int(ckpt.load(path)["step"])


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path):
    """Damage the middle of the file (tensor data) without changing its size: torch.load alone
    would read it without complaint; the zip's CRC-32 sums catch it."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 30-step run: the reference for resumed ones."""
    out = tmp_path_factory.mktemp("straight")
    train(cfg(), out, progress=False)
    return ckpt.load(out / "checkpoint.pt")


def test_the_last_two_checkpoints_are_kept(tmp_path):
    hooks = Steps()
    train(cfg(train__steps=20), tmp_path, hooks=hooks, progress=False)
    assert hooks.saved == [10, 20]
    assert _step(tmp_path / "checkpoint.pt") == 20 and _step(tmp_path / "checkpoint.prev.pt") == 10
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"
    # a crash between the two renames of a save leaves only checkpoint.prev.pt: it is used
    (tmp_path / "checkpoint.pt").unlink()
    assert ckpt.load_for_resume(tmp_path / "checkpoint.pt")["step"] == 10


@pytest.mark.parametrize("damage, reason", [(_truncate, "truncated"), (_flip_bytes, "checksum mismatch")])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, straight, damage, reason):
    train(cfg(train__steps=20), tmp_path, progress=False)
    damage(tmp_path / "checkpoint.pt")
    hooks = Steps()
    with caplog.at_level(logging.WARNING, logger="mfsweep.training.checkpoint"):
        result = train(cfg(), tmp_path, hooks=hooks, progress=False)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1, warning
    assert str(tmp_path / "checkpoint.pt") in warning[0] and reason in warning[0]
    assert "step 10" in warning[0] and "checkpoint.prev.pt" in warning[0]
    # resumed from step 10 (the previous checkpoint), not from 0 and not from the damaged 20
    assert hooks.logged == [15, 20, 25, 30] and hooks.saved == [20, 30]
    assert result.status == "finished" and result.step == 30
    assert (tmp_path / "checkpoint.pt.corrupt").exists(), "the damaged file is kept for inspection"
    final = ckpt.load(tmp_path / "checkpoint.pt")
    assert final["step"] == 30 and _step(tmp_path / "checkpoint.prev.pt") == 20
    assert all(torch.equal(final["model"][k], straight["model"][k]) for k in straight["model"]), \
        "the resumed run ends where an uninterrupted one does"


def test_both_damaged_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress", "--set", "train.steps=20"]) == 0
    _truncate(out / "checkpoint.pt")
    _flip_bytes(out / "checkpoint.prev.pt")
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no usable checkpoint" in err and str(out / "checkpoint.pt") in err
    assert str(out / "checkpoint.prev.pt") in err and "checksum mismatch" in err and "Delete the checkpoint" in err
    # nothing was overwritten: both damaged files are still there for the user to look at
    assert (out / "checkpoint.pt").exists() and (out / "checkpoint.prev.pt").exists()
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_for_resume(out / "checkpoint.pt")


def test_a_checkpoint_missing_keys_is_unusable(tmp_path):
    torch.save({"step": 5, "model": {}}, tmp_path / "checkpoint.pt")
    state, reason = ckpt.check(tmp_path / "checkpoint.pt")
    assert state is None and "missing keys" in reason and "'opt'" in reason


class _Payload:
    """Unpickling it would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "payload": _Payload(str(marker))}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        ckpt.load(path)
    state, reason = ckpt.check(path)
    assert state is None and "torch.load failed" in reason
    with pytest.raises(ckpt.CheckpointError, match="torch.load failed"):
        ckpt.load_for_resume(path)
    assert not marker.exists(), "the pickled object was never built"


def test_tune_restore_skips_a_damaged_restored_checkpoint(tmp_path, monkeypatch, caplog):
    """The Tune hand-off: a retried trial gets its last Tune checkpoint back; if that copy is
    damaged the trial folder's own checkpoint is used, if it is good and newer it is installed."""
    from ray import tune

    from mfsweep.sweep.tune import _restore_checkpoint

    out = tmp_path / "train"
    train(cfg(train__steps=10), out, progress=False)  # local: step 10
    newer = tmp_path / "newer"
    train(cfg(train__steps=20), newer, progress=False)  # a Tune checkpoint at step 20
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "checkpoint.pt").write_bytes((newer / "checkpoint.pt").read_bytes())
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(restored)))

    _truncate(restored / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="mfsweep.training.checkpoint"):
        assert _restore_checkpoint(out) == 10
    assert any(str(restored / "checkpoint.pt") in r.getMessage() and "unusable" in r.getMessage()
               for r in caplog.records)
    assert _step(out / "checkpoint.pt") == 10

    (restored / "checkpoint.pt").write_bytes((newer / "checkpoint.pt").read_bytes())
    assert _restore_checkpoint(out) == 20
    assert _step(out / "checkpoint.pt") == 20 and _step(out / "checkpoint.prev.pt") == 10
