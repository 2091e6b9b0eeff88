"""The CIFAR-10 U-Net (mfsweep/models/unet_cifar.py): size, contract, JVP, dropout, independence, errors."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mfsweep.config import ModelConfig, load_trial_config
from mfsweep.methods import METHODS
from mfsweep.models import build_backbone
from mfsweep.models.unet_cifar import SIZES, UNetCifar, from_config

#: MeanFlow (Geng et al. 2025, arXiv 2505.13447) §5 "CIFAR-10 Comparisons" / Tab. 3: "All entries are
#: with the same U-net developed from [Song et al. 2021] (~55M)"; the appendix repeats ~55M.
PAPER_PARAMS = 55e6


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convs on a shared 2-core box are ~10× slower with 2 intra-op threads than with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(data_shape=(3, 16, 16), num_classes=None, dropout=0.0, zero_init=1.0) -> UNetCifar:
    """The unet_cifar_tiny layout; zero_init=1 (plain Xavier) so every branch matters in the checks,
    where EDM's 1e-5 would make residual branches, and with them the time dependence, nearly vanish."""
    s = SIZES["unet_cifar_tiny"]
    return UNetCifar(data_shape, model_channels=s.model_channels, channel_mult=s.channel_mult,
                     num_blocks=s.num_blocks, attn_levels=s.attn_levels, dropout=dropout,
                     num_classes=num_classes, zero_init=zero_init, name="unet_cifar_tiny")


def test_paper_configuration_parameter_count_on_meta():
    with torch.device("meta"):
        net = build_backbone(ModelConfig(backbone="unet_cifar", dropout=0.2), (3, 32, 32), None)
    assert all(p.is_meta for p in net.parameters())  # nothing allocated
    n = sum(p.numel() for p in net.parameters())
    print(f"unet_cifar parameters on (3, 32, 32): {n:,} ({n / 1e6:.2f}M; paper ~55M)")
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.03
    assert n == 55_798_275  # layout pinned: a changed block shows up here
    # Attention only at level 1 (16×16) and in the middle; 4 blocks per level; dropout wired through.
    assert sum(m.attn is not None for m in net.enc) == 4 and sum(m.attn is not None for m in net.dec) == 2
    assert all(m.p == 0.2 for m in net.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("backbone", ["unet_cifar_tiny", "unet_cifar"])
def test_from_config_any_channels_and_sizes(backbone):
    """Any channel count and any side divisible by 2^(levels − 1); the size comes from the name."""
    shapes = [(1, 8, 8), (3, 16, 16), (4, 12, 20)] if backbone == "unet_cifar_tiny" else [(3, 32, 32), (1, 4, 4)]
    for shape in shapes:
        with torch.device("meta") if backbone == "unet_cifar" else torch.device("cpu"):
            net = from_config(ModelConfig(backbone=backbone), shape, None)
        z = torch.randn(2, *shape, device="meta" if backbone == "unet_cifar" else "cpu")
        t = torch.rand(2, device=z.device)
        assert net(z, t / 2, t).shape == z.shape


def test_output_shape_conditional_and_null_class():
    torch.manual_seed(0)
    net = tiny(num_classes=10).eval()
    z, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    y = torch.tensor([0, 3, 9, 10])  # 10 = the null class
    u = net(z, t / 2, t, y)
    assert u.shape == z.shape and torch.isfinite(u).all()
    # y=None means the null class; labels matter.
    null = torch.full((4,), 10)
    assert torch.equal(net(z, t / 2, t), net(z, t / 2, t, null))
    assert not torch.allclose(u[:3], net(z, t / 2, t)[:3])
    # An unconditional net (num_classes=None) takes y=None.
    assert tiny().eval()(z, t / 2, t).shape == z.shape


def test_jvp_matches_central_differences_float64():
    """torch.func.jvp along each of z, r, t (and a mix) equals a central difference in float64."""
    torch.manual_seed(0)
    net = tiny(num_classes=10).double().eval()
    b = 2
    z = torch.randn(b, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.7, 0.4], dtype=torch.float64)
    r = torch.tensor([0.2, 0.1], dtype=torch.float64)
    y = torch.tensor([1, 10])

    def f(z_, r_, t_):
        return net(z_, r_, t_, y)

    dz = torch.randn_like(z)
    zero, one = torch.zeros(b, dtype=torch.float64), torch.ones(b, dtype=torch.float64)
    tangents = {"z": (dz, zero, zero), "r": (torch.zeros_like(z), one, zero), "t": (torch.zeros_like(z), zero, one),
                "meanflow (v, 0, 1)": (dz, zero, one)}
    eps = 1e-6
    for name, (tz, tr, tt) in tangents.items():
        _, jvp = torch.func.jvp(f, (z, r, t), (tz, tr, tt))
        fd = (f(z + eps * tz, r + eps * tr, t + eps * tt) - f(z - eps * tz, r - eps * tr, t - eps * tt)) / (2 * eps)
        assert fd.abs().max() > 1e-3, name  # the direction actually moves the output
        err = (jvp - fd).abs().max() / fd.abs().max()
        assert err < 1e-6, (name, err.item())


def test_meanflow_training_step_with_jvp():
    """One MeanFlow step on the tiny net from the registry: finite loss, finite nonzero grads, and
    an Adam step lowers the error on the same batch and draws."""
    cfg = load_trial_config({"data": {"name": "synthetic_images"}, "model": {"backbone": "unet_cifar_tiny"}})
    loss_fn = METHODS.lookup("meanflow")(cfg, None)
    torch.manual_seed(0)
    net = build_backbone(cfg.model, (3, 16, 16), None)  # the default (EDM) init
    x = torch.randn(8, 3, 16, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss, mon = loss_fn(net, x, None, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert net.out.weight.grad.abs().sum() > 0 and net.cond.time_mlp[0].weight.grad.abs().sum() > 0
    opt.step()
    loss2, mon2 = loss_fn(net, x, None, generator=torch.Generator().manual_seed(0))
    # With adaptive weighting (p = 1) the loss value sits near 1 while the error is large; mse moves.
    assert not torch.equal(loss2, loss.detach())
    assert mon2["mse"] < mon["mse"]


def test_dropout_train_differs_eval_equal():
    torch.manual_seed(0)
    z, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    net = tiny(dropout=0.2)
    assert not torch.allclose(net(z, t / 2, t), net(z, t / 2, t))
    net.eval()
    assert torch.equal(net(z, t / 2, t), net(z, t / 2, t))
    plain = tiny(dropout=0.0)
    assert torch.equal(plain(z, t / 2, t), plain(z, t / 2, t))  # train mode, no dropout: deterministic


def test_per_sample_independence_and_no_batchnorm_or_affine_norm():
    torch.manual_seed(0)
    net = tiny(num_classes=10).eval()
    z = torch.randn(4, 3, 8, 8, requires_grad=True)
    t = torch.rand(4, requires_grad=True)
    r = (t / 2).detach().requires_grad_()
    y = torch.tensor([0, 1, 10, 5])
    u = net(z, r, t, y)
    u[1].sum().backward()  # row 1's output depends on row 1's inputs only
    others = [0, 2, 3]
    assert z.grad[others].abs().max() == 0 and t.grad[others].abs().max() == 0 and r.grad[others].abs().max() == 0
    assert z.grad[1].abs().max() > 0 and t.grad[1] != 0
    alone = torch.cat([net(z[i:i + 1], r[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    assert torch.allclose(u, alone, atol=1e-5)

    norms = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    found = [m for m in net.modules() if isinstance(m, norms)]
    assert found and all(not getattr(m, "affine", False) and not getattr(m, "elementwise_affine", False)
                         for m in found)


def test_attention_has_no_fused_sdpa():
    """The JVP path must not reach scaled_dot_product_attention (no forward-mode AD in its fused kernels)."""
    net = tiny().eval()
    z, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Spy():
        torch.func.jvp(lambda a, b, c: net(a, b, c), (z, t / 2, t), (z, torch.zeros(1), torch.ones(1)))
    assert "softmax" in seen and "scaled_dot_product_attention" not in seen


@pytest.mark.parametrize("shape,match", [
    ((3, 15, 15), r"unet_cifar_tiny: image size 15x15 is not divisible by 2 = 2\^\(2 - 1\) for its 2 levels; "
                  r"use a side that is a multiple of 2 \(height 14 or 16, width 14 or 16\)"),
    ((2,), r"takes images of per-sample shape \(C, H, W\), got \(2,\); use the mlp backbone"),
    ((3, 32), r"per-sample shape \(C, H, W\), got \(3, 32\)"),
])
def test_bad_shapes_tiny(shape, match):
    with pytest.raises(ValueError, match=match):
        from_config(ModelConfig(backbone="unet_cifar_tiny"), shape, None)


def test_bad_sizes_name_the_fix():
    with torch.device("meta"), pytest.raises(
            ValueError, match=r"unet_cifar: image size 30x30 is not divisible by 4 = 2\^\(3 - 1\) for its 3 levels; "
                              r"use a side that is a multiple of 4 \(height 28 or 32, width 28 or 32\)"):
        from_config(ModelConfig(backbone="unet_cifar"), (3, 30, 30), None)
    with pytest.raises(ValueError, match=r"image size 15x16 is not divisible by 2.*height 14 or 16, width 16"):
        tiny((3, 15, 16))
    net = tiny().eval()
    with pytest.raises(ValueError, match=r"z must be \(B, 3, H, W\), got \(2, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"image size 9x9 is not divisible by 2"):
        net(torch.randn(2, 3, 9, 9), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"r and t must be \(2,\)"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(()), torch.ones(2))


@pytest.mark.skipif(not os.environ.get("MFSWEEP_COMPILE_TEST"),
                    reason="torch.compile of the JVP takes minutes on CPU; set MFSWEEP_COMPILE_TEST=1 to run")
def test_compiled_jvp_matches_eager():
    torch.manual_seed(0)
    net = tiny().eval()
    z, v, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2)

    def step(z_, r_, t_, v_):
        tangents = (v_, torch.zeros_like(r_), torch.ones_like(t_))
        return torch.func.jvp(lambda a, b, c: net(a, b, c), (z_, r_, t_), tangents)

    ref = step(z, t / 2, t, v)
    out = torch.compile(step)(z, t / 2, t, v)
    for a, b in zip(ref, out):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
