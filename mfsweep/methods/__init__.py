"""The training method and its ablation axes, in one time convention (docs/method.md §1): t = 1 is
noise, t = 0 is data, z_t = (1 − t)·x + t·e, v = e − x; the network predicts u(z_t, r, t).

    meanflow.py    the MeanFlow target (one torch.func.jvp) and loss; Flow Matching is frac_r_neq_t = 0
    timesteps.py   (t, r) samplers (paper Table 1a, 1d)
    sampling.py    time grids and few-step sampling, ``sample(net, noise, labels, time_grid)``

The registries below list the names a config may use without importing torch.
"""

from __future__ import annotations

from mfsweep.registry import Registry, lazy

#: ``meanflow.time_sampler.name`` → ``fn(n, params, generator, device) -> (a, b)``: two independent
#: draws of shape (n,); t = max, r = min.
TIME_SAMPLERS = Registry("time sampler", {
    "uniform": lazy("mfsweep.methods.timesteps:uniform_pair"),
    "logit_normal": lazy("mfsweep.methods.timesteps:logit_normal_pair"),
    "separate_logit_normal": lazy("mfsweep.methods.timesteps:separate_logit_normal_pair"),
})

#: ``meanflow.tangent`` → the JVP tangent's (dr, dt) on (z, r, t); z always gets v. Paper Table 1b:
#: only (v, 0, 1), the total derivative d/dt along the trajectory, is correct.
TANGENTS = Registry("tangent", {
    "v01": (0.0, 1.0),
    "v00": (0.0, 0.0),
    "v10": (1.0, 0.0),
    "v11": (1.0, 1.0),
})

#: ``eval.grid`` → ``fn(nfe, dtype, device) -> (nfe + 1,)`` decreasing times from 1 to 0.
TIME_GRIDS = Registry("time-grid rule", {
    "linspace": lazy("mfsweep.methods.sampling:linspace_grid"),
})
