"""train.precision (bf16 autocast), train.compile (torch.compile of the loss call) and random flips."""

import pytest
import torch
import torch._dynamo.utils as dynamo_utils

from mfsweep.config import ConfigError, load_trial_config
from mfsweep.data import Dataset
from mfsweep.methods import METHODS
from mfsweep.models import build_backbone
from mfsweep.training.fast import Autocast, compiled_loss, with_precision
from mfsweep.training.train import _batches


def _setup(**raw):
    cfg = load_trial_config(raw)
    torch.manual_seed(0)
    net = build_backbone(cfg.model, (2,), None)
    return cfg, net, METHODS.lookup(cfg.method.name)(cfg, None)


def _loss_and_grads(loss_call, net, model, x):
    model.zero_grad(set_to_none=True)
    loss_vec, _ = loss_call(net, x, None, generator=torch.Generator().manual_seed(3))
    loss_vec.mean().backward()
    return loss_vec.detach(), [p.grad.clone() for p in model.parameters()]


def test_bf16_runs_the_network_in_bf16_and_keeps_target_and_loss_in_fp32():
    cfg, model, loss_fn = _setup(train={"precision": "bf16"})
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    net = with_precision(model, "bf16", torch.device("cpu"))
    assert isinstance(net, Autocast)
    loss16, grads16 = _loss_and_grads(loss_fn, net, model, x)
    for h in hooks:
        h.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)  # every matmul ran in bf16
    loss32, grads32 = _loss_and_grads(loss_fn, model, model, x)
    assert loss16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads16)
    assert torch.allclose(loss16, loss32, rtol=5e-2, atol=1e-2)  # bf16 has ~3 significant digits
    assert not torch.equal(loss16, loss32)  # and it did change the arithmetic
    assert with_precision(model, "fp32", torch.device("cpu")) is model


def test_compiled_loss_equals_eager_and_really_compiles():
    cfg, model, loss_fn = _setup(train={"compile": True})
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    eager_loss, eager_grads = _loss_and_grads(loss_fn, model, model, x)
    dynamo_utils.counters.clear()
    step = compiled_loss(loss_fn)
    comp_loss, comp_grads = _loss_and_grads(step, model, model, x)
    assert dynamo_utils.counters["stats"]["unique_graphs"] > 0  # dynamo captured the JVP's graph
    assert torch.allclose(comp_loss, eager_loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(comp_grads, eager_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_each_trial_compiles_its_own_loss_even_past_dynamos_recompile_limit():
    # A reused Ray worker runs many trials in one process; each trial's settings are guarded
    # constants, so past dynamo's recompile limit a later trial would silently run eagerly.
    # With the limit lowered to 1, the second and third trials must compile as many graphs as the first.
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    new_graphs = []
    with torch._dynamo.config.patch(recompile_limit=1):
        for frac in (0.1, 0.2, 0.3):
            cfg, model, loss_fn = _setup(meanflow={"frac_r_neq_t": frac}, train={"compile": True})
            before = dynamo_utils.counters["stats"]["unique_graphs"]
            loss, _ = _loss_and_grads(compiled_loss(loss_fn), model, model, x)
            new_graphs.append(dynamo_utils.counters["stats"]["unique_graphs"] - before)
            eager, _ = _loss_and_grads(loss_fn, model, model, x)
            assert torch.allclose(loss, eager, rtol=1e-6, atol=1e-7)
        assert new_graphs[0] > 0 and new_graphs == [new_graphs[0]] * 3, new_graphs
        # the failure this guards against: without the reset the same sequence stops compiling
        torch._dynamo.reset()
        stale = []
        for frac in (0.1, 0.2, 0.3):
            cfg, model, loss_fn = _setup(meanflow={"frac_r_neq_t": frac}, train={"compile": True})
            before = dynamo_utils.counters["stats"]["unique_graphs"]
            _loss_and_grads(compiled_loss(loss_fn, fresh=False), model, model, x)
            stale.append(dynamo_utils.counters["stats"]["unique_graphs"] - before)
        assert stale[-1] < new_graphs[-1], (stale, new_graphs)


def test_compiled_loss_keeps_shapes_static():
    # Dynamo's "automatic dynamic" shapes (recorded on disk per source line) would give later
    # trials symbolic batch sizes and slower kernels once the loss had been called at two sizes.
    # A trial's batch is fixed, so the compiled loss specialises: a new size recompiles, and no
    # shape symbol is ever created.
    import logging

    made = []
    handler = logging.Handler()
    handler.emit = lambda record: made.append(record.getMessage())
    log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        cfg, model, loss_fn = _setup(train={"compile": True})
        step = compiled_loss(loss_fn)
        for rows in (32, 48):
            x = torch.randn(rows, 2, generator=torch.Generator().manual_seed(rows))
            loss, _ = _loss_and_grads(step, model, model, x)
            assert loss.shape == (rows,)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert made, "no log from symbolic_shapes: the check below would be vacuous"
    assert not [m for m in made if "create_symbol" in m]


def test_compile_with_a_per_step_schedule_is_refused():
    with pytest.raises(ConfigError, match="train.compile: method 'alphaflow'"):
        load_trial_config({"train": {"compile": True}, "method": {"name": "alphaflow"}})


def test_hflip_flips_about_half_of_the_batch_left_right_and_nothing_else():
    x = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).reshape(4, 1, 2, 3)
    cfg = load_trial_config({"data": {"name": "synthetic_images"}, "model": {"backbone": "unet"},
                             "train": {"batch_size": 400}})
    ds = Dataset("imgs", "image", x, None, x, None, None, (1, 2, 3), hflip=True)
    xb, yb = _batches(ds, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))()
    assert yb is None and xb.shape == (400, 1, 2, 3)
    as_is = (xb[:, None] == x[None]).flatten(2).all(-1).any(-1)
    flipped = (xb[:, None] == x.flip(-1)[None]).flatten(2).all(-1).any(-1)
    assert (as_is ^ flipped).all()  # every row is a training image, flipped or not
    assert 0.4 < flipped.float().mean() < 0.6
    ds.hflip = False
    xb, _ = _batches(ds, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))()
    assert (xb[:, None] == x[None]).flatten(2).all(-1).any(-1).all()


def test_compile_time_is_timed_apart_from_training_and_kept_across_resumes(tmp_path):
    """train.compile: the first step of each process (tracing and compiling) is time/compile_s, not
    training; a resumed process adds its own first step; without compile it is 0 and not reported."""
    import json
    import time

    from mfsweep.sweep.tune import TuneReporter
    from mfsweep.training.train import train

    raw = {"data": {"name": "moons", "num_train": 256, "num_test": 128},
           "model": {"hidden_dim": 16, "depth": 1},
           "train": {"steps": 10, "batch_size": 32, "checkpoint_every": 5, "log_every": 5, "warmup_steps": 2,
                     "device": "cpu", "compile": True},
           "eval": {"nfe": [1], "num_samples": 32, "metrics": ["swd"]}}
    t0 = time.perf_counter()
    r1 = train(load_trial_config(raw), tmp_path / "c", progress=False)
    wall = time.perf_counter() - t0
    assert r1.status == "finished" and r1.compile_time_s > 0
    assert r1.train_time_s > 0 and r1.train_time_s + r1.eval_time_s + r1.checkpoint_time_s + r1.compile_time_s <= wall
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert saved["compile_time_s"] == pytest.approx(r1.compile_time_s)
    raw["train"]["steps"] = 20  # a new process would compile again: so does this call
    r2 = train(load_trial_config(raw), tmp_path / "c", progress=False)
    assert r2.step == 20 and r2.compile_time_s > r1.compile_time_s
    raw["train"]["compile"] = False
    r3 = train(load_trial_config(raw), tmp_path / "e", progress=False)
    assert r3.compile_time_s == 0.0

    reported = []
    rep = TuneReporter(None, tmp_path, "swd/nfe_1")  # finish()'s mapping of the result to Tune's metrics
    rep._report = lambda step, out, files=(): reported.append(out)
    for res in (r2, r3):
        rep.finish(res)
    assert reported[0]["time/compile_s"] == pytest.approx(r2.compile_time_s)
    assert "time/compile_s" not in reported[1]
