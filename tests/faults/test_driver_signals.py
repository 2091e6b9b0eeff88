"""Fault: the driver of `mfsweep run` gets SIGINT (Ctrl+C) or SIGTERM mid-study (local Ray, 2 CPUs).

It stops the trials cleanly and exits 130 (SIGINT) or 143 (SIGTERM); the parent run and the
unfinished child run are KILLED, none is left RUNNING. Rerunning the same command resumes; in the
end every trial is FINISHED with one child run, every logged step once, and trials that had
finished before a signal are not trained again (their checkpoint files are untouched).

One study of three trials run one at a time, to pay for Ray's start-up three times rather than
four: SIGINT while t001 trains → rerun (resumes t001) → SIGTERM while t002 trains → rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

STEPS, CKPT_EVERY, LOG_EVERY = 900, 300, 100
STUDY = {
    "base": {"data": {"name": "moons", "num_train": 2000, "num_test": 500},
             "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
             "train": {"steps": STEPS, "batch_size": 64, "checkpoint_every": CKPT_EVERY, "log_every": LOG_EVERY,
                       "warmup_steps": 10}},
    "axes": {"meanflow.frac_r_neq_t": [0.0, 0.25, 0.5]}, "seeds": [0], "max_concurrent_trials": 1,
    "eval": {"nfe": [1], "num_samples": 200}}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Study:
    def __init__(self, tmp: Path):
        self.tmp, self.root = tmp, tmp / "ray" / "sig"
        path = tmp / "sig.yaml"
        path.write_text(yaml.safe_dump({"name": "sig", "storage": str(tmp / "ray"), **STUDY}, sort_keys=False))
        self.uri = f"sqlite:///{tmp}/mlflow.db"
        self.cmd = [sys.executable, "-m", "mfsweep.cli", "run", str(path), "--num-cpus", "2",
                    "--tracking-uri", self.uri]

    def signalled(self, sig: int, trial: str) -> tuple[int, str]:
        """Run until ``trial`` has a checkpoint, send ``sig`` to the driver process only, wait."""
        log_path = self.tmp / f"signal-{int(sig)}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.cmd, cwd=self.tmp, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                end = time.time() + 300
                while not any(self.root.glob(f"*/{trial}-*/train/checkpoint.pt")):
                    assert proc.poll() is None, f"driver exited early with {proc.returncode}: {log_path.read_text()}"
                    assert time.time() < end, f"timed out waiting for a checkpoint of {trial}"
                    time.sleep(0.1)
                os.kill(proc.pid, sig)  # not Ray's processes: the driver stops them
                rc = proc.wait(timeout=180)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        return rc, log_path.read_text()

    def rerun(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd, cwd=self.tmp, env=_env(), capture_output=True, text=True, timeout=400)

    def runs(self):
        client = MlflowClient(self.uri)
        runs = client.search_runs([client.get_experiment_by_name("sig").experiment_id])
        parents = [r for r in runs if r.data.tags.get("mfsweep.role") == "study"]
        children = {r.data.tags["mfsweep.trial_id"][:4]: r for r in runs if r.data.tags.get("mfsweep.role") == "trial"}
        assert len(runs) == len(parents) + len(children), "one child run per trial"
        return client, parents, children

    def stamps(self, trial: str) -> dict[str, int]:
        folder = next(self.root.glob(f"*/{trial}-*/train"))
        return {p.name: p.stat().st_mtime_ns for p in folder.glob("checkpoint*.pt")}

    def assert_stopped(self, finished: list[str], stopped: str) -> None:
        _, parents, children = self.runs()
        assert len(parents) == 1 and parents[0].info.status == "KILLED"
        status = {t: (r.info.status, r.data.tags["mfsweep.status"]) for t, r in children.items()}
        assert status == {**{t: ("FINISHED", "finished") for t in finished}, stopped: ("KILLED", "stopped")}, status


def test_sigint_and_sigterm_stop_cleanly_and_resume(tmp_path):
    study = Study(tmp_path)

    rc, out = study.signalled(signal.SIGINT, "t001")
    assert rc == 130, out
    assert "interrupted: rerun the same command to resume" in " ".join(out.split())
    study.assert_stopped(["t000"], "t001")
    t000 = study.stamps("t000")
    assert set(t000) == {"checkpoint.pt", "checkpoint.prev.pt"}

    rc, out = study.signalled(signal.SIGTERM, "t002")  # a resumed execution, stopped by SIGTERM
    assert rc == 143, out
    assert "interrupted by SIGTERM: rerun the same command to resume" in " ".join(out.split())
    assert "resumed execution" in out
    study.assert_stopped(["t000", "t001"], "t002")
    t001 = study.stamps("t001")

    proc = study.rerun()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed execution" in proc.stdout
    client, parents, children = study.runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == ["t000", "t001", "t002"]
    for run in children.values():
        assert run.info.status == "FINISHED" and run.data.tags["mfsweep.status"] == "finished"
        for key in ("train/loss", "train/lr"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), f"{key}: every step exactly once"
    for tid in ("t001", "t002"):  # each continued from a checkpoint of its interrupted attempt
        assert CKPT_EVERY <= int(children[tid].data.tags["mfsweep.resumed_from"]) < STEPS
    assert "mfsweep.resumed_from" not in children["t000"].data.tags, "the finished trial was not started again"
    assert study.stamps("t000") == t000 and study.stamps("t001") == t001, \
        "finished trials' checkpoints were not rewritten by later reruns"


def test_graceful_stop_turns_sigterm_into_tunes_stop():
    """In process, no Ray: inside ``Tuner.fit`` (Tune's stop handler on SIGUSR1) SIGTERM calls that
    handler instead of killing the process; before Tune installed it, it raises KeyboardInterrupt;
    afterwards the previous handlers are back."""
    from mfsweep.sweep.signals import graceful_stop

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    calls = []
    with graceful_stop() as stop:
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # as Tune's fit() does
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # Python runs handlers between bytecodes; let it
    assert calls == [signal.SIGTERM] and stop.name == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before
    with pytest.raises(KeyboardInterrupt), graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert stop.name == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before

