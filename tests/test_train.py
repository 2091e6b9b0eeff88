"""The training loop: outputs, bit-exact resume, divergence handling, CLI exit codes."""

import json

import pytest
import torch

from mfsweep.training import checkpoint as ckpt
from mfsweep.cli import main
from mfsweep.config import ConfigError, load_trial_config, set_dotted
from mfsweep.training.train import train

TINY = {
    "name": "tiny",
    "data": {"name": "moons", "num_train": 512, "num_test": 256},
    "model": {"hidden_dim": 16, "depth": 1},
    "train": {"steps": 30, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "warmup_steps": 5, "device": "cpu"},
    "eval": {"nfe": [1, 2], "num_samples": 64, "metrics": ["swd"]},
}


def cfg(**over):
    raw = json.loads(json.dumps(TINY))
    for key, value in over.items():  # train__steps=5 sets train.steps
        set_dotted(raw, key.replace("__", "."), value)
    return load_trial_config(raw)


def _weights(path):
    state = ckpt.load(path / "checkpoint.pt")
    return state["step"], state["model"], state["ema"]


def test_outputs_and_reproducibility(tmp_path):
    r1 = train(cfg(), tmp_path / "a", progress=False)
    r2 = train(cfg(), tmp_path / "b", progress=False)
    assert r1.status == "finished" and r1.step == 30
    assert set(r1.metrics) == {"swd/nfe_1", "swd/nfe_2", "num_samples"}
    for name in ("config.yaml", "metrics.json", "checkpoint.pt", "samples/nfe_1.png", "samples/nfe_2.npy"):
        assert (tmp_path / "a" / name).exists(), name
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["status"] == "finished"
    assert saved["metric_metadata"]["swd"]["num_samples"] == 64 and saved["metric_metadata"]["swd"]["extractor"]
    s1, m1, e1 = _weights(tmp_path / "a")
    s2, m2, e2 = _weights(tmp_path / "b")
    assert all(torch.equal(m1[k], m2[k]) for k in m1) and all(torch.equal(e1[k], e2[k]) for k in e1)
    assert r1.metrics == r2.metrics


def test_resume_is_bit_exact(tmp_path):
    train(cfg(), tmp_path / "straight", progress=False)
    train(cfg(train__steps=20), tmp_path / "resumed", progress=False)
    assert _weights(tmp_path / "resumed")[0] == 20
    train(cfg(), tmp_path / "resumed", progress=False)  # continues from step 20 to 30
    s1, m1, e1 = _weights(tmp_path / "straight")
    s2, m2, e2 = _weights(tmp_path / "resumed")
    assert s1 == s2 == 30
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(e1[k], e2[k]) for k in e1)


def test_resume_refuses_a_different_config(tmp_path):
    train(cfg(train__steps=10), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="different config"):  # exit 2 through the CLI
        train(cfg(meanflow__frac_r_neq_t=0.5), tmp_path / "x", progress=False)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Adam moves each weight by about lr per step: lr = 1e30 overflows the network within steps.
    c = cfg(train__lr=1e30, train__warmup_steps=0, train__grad_clip=None, train__checkpoint_every=1)
    result = train(c, tmp_path / "d", progress=False)
    assert result.status == "diverged"
    assert result.error.startswith(f"diverged at step {result.step + 1}")
    step, model, _ = _weights(tmp_path / "d")
    assert step == result.step  # the last checkpoint is the last step whose loss was finite
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "d" / "samples").exists()


def test_cli_train_and_exit_codes(tmp_path, capsys):
    import yaml

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["train", str(good), "--out", str(out), "--no-progress", "--set", "train.steps=10"]) == 0
    assert "finished at step 10" in capsys.readouterr().out
    bad = dict(TINY, meanflow={"frac_r_neq_t": 2, "tangent": "v9"}, extra_key=1)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    bad_out = tmp_path / "bad_run"
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert "meanflow.frac_r_neq_t" in err and "meanflow.tangent" in err and "extra_key: unknown key" in err
    assert not bad_out.exists()  # nothing half-written
    assert main(["train", str(good), "--out", str(bad_out), "--set", "train.stepz=3"]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err
    diverging = ["--set", "train.lr=1e30", "--set", "train.grad_clip=null", "--set", "train.warmup_steps=0"]
    assert main(["train", str(good), "--out", str(tmp_path / "div"), "--no-progress", *diverging]) == 3
    assert "diverged at step" in capsys.readouterr().err


def test_brief_two_gaussian_demo_puts_both_modes_in_place_at_one_step(tmp_path):
    """The brief's toy, done right: 1-NFE samples split evenly between ±(3, 3)."""
    from mfsweep.config import load_config_file

    c = load_config_file("studies/configs/seed_toy.yaml", [  # the shipped config, 2000 steps
        "eval.nfe=[1]", "eval.num_samples=1000", "eval.metrics=[swd]", "train.device=cpu"])
    result = train(c, tmp_path, progress=False)
    assert result.status == "finished"
    import numpy as np

    x = torch.as_tensor(np.load(tmp_path / "samples" / "nfe_1.npy"))
    upper = x.sum(1) > 0
    assert 0.35 < upper.float().mean() < 0.65
    assert torch.allclose(x[upper].mean(0), torch.tensor([3.0, 3.0]), atol=0.5)
    assert torch.allclose(x[~upper].mean(0), torch.tensor([-3.0, -3.0]), atol=0.5)


def test_time_is_split_into_training_evaluation_and_checkpoints(tmp_path):
    """time/train_s is the loop alone: periodic and final evaluation and checkpoint writes are timed
    apart, their sum is within the call's wall time, and a resume continues all three."""
    import time as _time

    class SlowCheckpoints:  # a hand-off that takes a known time (as a Ray Tune report can)
        def on_log(self, step, metrics): pass
        def on_eval(self, step, values, num_samples, phase): pass
        def on_checkpoint(self, step, path): _time.sleep(0.2)

    t0 = _time.perf_counter()
    r = train(cfg(eval__every_steps=10, train__steps=20), tmp_path, hooks=SlowCheckpoints(), progress=False)
    wall = _time.perf_counter() - t0
    assert r.status == "finished"
    assert r.checkpoint_time_s >= 0.4  # 2 checkpoints (steps 10, 20) × 0.2 s of hand-off
    assert r.eval_time_s > 0 and r.train_time_s > 0
    assert r.train_time_s + r.eval_time_s + r.checkpoint_time_s <= wall
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["checkpoint_time_s"] == pytest.approx(r.checkpoint_time_s)
    r2 = train(cfg(eval__every_steps=10, train__steps=30), tmp_path, hooks=SlowCheckpoints(), progress=False)
    # continued from what the step-20 checkpoint recorded (the step-10 hand-off; a checkpoint cannot
    # contain its own write time), plus the step-30 checkpoint
    assert r2.checkpoint_time_s >= 0.4
    assert r2.train_time_s > r.train_time_s * 0.5


COND = {
    "name": "cond",
    "data": {"name": "synthetic_images", "resolution": 8, "channels": 1, "num_classes": 3, "num_train": 96,
             "num_test": 8, "conditional": True},
    "model": {"backbone": "unet", "channels": 8, "channel_mult": [1, 2]},
    "meanflow": {"cfg": {"omega": 2.0, "class_dropout": 0.25}},
    "train": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "warmup_steps": 5,
              "device": "cpu", "threads": 1},
    "eval": {"nfe": [1], "num_samples": 9, "metrics": ["fid"], "batch_size": 9},
}


class _Losses:
    def __init__(self):
        self.logs, self.evals = [], []

    def on_log(self, step, metrics):
        self.logs.append((step, metrics["train/loss"]))

    def on_eval(self, step, values, num_samples, phase):
        self.evals.append((step, phase, dict(values)))

    def on_checkpoint(self, step, path):
        pass


def test_class_conditional_unet_with_guidance_and_fid(tmp_path, monkeypatch):
    """train() on class-conditional images with the U-Net and CFG (omega 2, class dropout), scored
    with FID (random Inception weights, no download): the class embedding (and its null row) is
    learnt, the network's output depends on the label, the samples and the FID are there."""
    from test_fid import _random_inception_weights

    from mfsweep.data import load_dataset
    from mfsweep.training.train import build_model

    monkeypatch.setenv("MFSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = _random_inception_weights(tmp_path / "inception.pt", 0)
    monkeypatch.setenv("MFSWEEP_INCEPTION_WEIGHTS", str(weights))
    c = load_trial_config(json.loads(json.dumps(COND)))
    threads = torch.get_num_threads()
    hooks = _Losses()
    try:
        result = train(c, tmp_path / "run", hooks=hooks, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "finished" and result.step == 20, result.error
    assert set(result.metrics) == {"fid/nfe_1", "num_samples"}
    assert torch.isfinite(torch.tensor(result.metrics["fid/nfe_1"])) and result.metrics["fid/nfe_1"] > 0
    assert result.metric_metadata["fid"]["extractor"].endswith(
        __import__("hashlib").sha256(weights.read_bytes()).hexdigest()[:8])
    assert hooks.evals and hooks.evals[-1][1] == "final" and "fid/nfe_1" in hooks.evals[-1][2]
    assert [s for s, _ in hooks.logs] == list(range(5, 21, 5))
    assert all(torch.isfinite(torch.tensor(v)) for _, v in hooks.logs)

    samples = __import__("numpy").load(tmp_path / "run" / "samples" / "nfe_1.npy")
    assert samples.shape == (9, 1, 8, 8)
    # the weights: the label embedding has a row per class plus the null (dropped) class; all trained
    torch.manual_seed(c.seed)
    init = build_model(c, load_dataset(c.data)).state_dict()
    state = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    label = [k for k in state["model"] if k.endswith("label.weight")]
    assert len(label) == 1
    w0, w1 = init[label[0]], state["model"][label[0]]
    assert w1.shape[0] == 3 + 1
    assert all(not torch.equal(w0[i], w1[i]) for i in range(4)), "every class row (and the null row) was trained"
    # the trained network's output depends on the class label
    net = build_model(c, load_dataset(c.data))
    net.load_state_dict(state["model"])
    net.eval()
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ones, zeros = torch.ones(3), torch.zeros(3)
    with torch.no_grad():
        outs = [net(z, zeros, ones, torch.full((3,), k)) for k in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
