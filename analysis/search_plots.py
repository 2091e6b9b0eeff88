"""Figures of a search study's report (data from analysis.search; seaborn / matplotlib, Agg).

Every function saves a PNG and returns its path, or None when there is nothing to draw.

- `plot_param_effects`: the final search metric against each searched parameter, one seaborn
  panel per parameter (log x axis for log-uniform parameters); trials stopped early are drawn at
  their last periodic-eval value with another marker, the best trial is starred.
- `plot_parallel_coordinates`: every trial as a line through its (scaled) parameters and the
  metric, coloured by the metric; stopped / failed trials grey.
- `plot_importance`: parameter importances as a bar chart.
- `plot_best_so_far`: best-so-far final metric against trial number in start order.
- `plot_asha_curves`: the periodic-eval metric against training step for every trial, ASHA's
  rungs as dotted lines and the stopping points marked.
- `plot_top_samples`: the 1-NFE samples of the best trials (2-D scatter or the sample PNG).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.plots import _save, fetch_artifact  # noqa: E402
from analysis.search import FINISHED, STOPPED, Importance, SearchInfo, fmt  # noqa: E402
from analysis.load import StudyRuns  # noqa: E402

STOP_LABEL = "stopped early (last periodic eval)"


def _ylabel(info: SearchInfo, what: str = "final") -> str:
    return f"{info.metric} ({what}, {info.direction_text})"


def plot_param_effects(frame: pd.DataFrame, info: SearchInfo, out_path: str | Path,
                       best_run_id: str | None = None) -> Path | None:
    """One panel per searched parameter: final metric (finished trials) against the parameter."""
    if not info.params:
        return None
    ok = frame[(frame["status"] == FINISHED) & np.isfinite(frame["objective"].astype(float))]
    stopped = frame[(frame["status"] == STOPPED) & np.isfinite(frame["last_eval"].astype(float))]
    if ok.empty and stopped.empty:
        return None
    n = len(info.params)
    fig, axs = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False, sharey=True)
    for ax, p in zip(axs.flat, info.params):
        if p.numeric:
            sns.scatterplot(data=ok, x=p.key, y="objective", ax=ax, s=55, color="C0",
                            label="finished (final)")
            if len(stopped):
                sns.scatterplot(data=stopped, x=p.key, y="last_eval", ax=ax, marker="X", s=55,
                                color="0.55", label=STOP_LABEL)
            if p.log:
                ax.set_xscale("log")
        else:
            order = list(p.choices)
            sns.stripplot(data=ok, x=p.key, y="objective", order=order, ax=ax, size=7,
                          color="C0", jitter=0.15, label="finished (final)")
            if len(stopped):
                sns.stripplot(data=stopped, x=p.key, y="last_eval", order=order, ax=ax, size=7,
                              marker="X", color="0.55", jitter=0.15, label=STOP_LABEL)
            ax.set_xticks(range(len(order)), order)
            ax.set_xlim(-0.5, len(order) - 0.5)
        if best_run_id is not None and best_run_id in set(ok["run_id"]):
            b = ok[ok["run_id"] == best_run_id].iloc[0]
            x = b[p.key] if p.numeric else list(p.choices).index(str(b[p.key]))
            ax.scatter([x], [b["objective"]], marker="*", s=260, color="C3", zorder=5,
                       label="best")
        scale = " (log scale)" if p.numeric and p.log else ""
        ax.set(xlabel=f"{info.short(p.key)}{scale}", ylabel=_ylabel(info),
               title=f"{info.short(p.key)}: {p.describe()[0]}")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        if ax is axs.flat[0]:
            ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(f"{info.metric} against each searched parameter ({len(ok)} finished, "
                 f"{len(stopped)} stopped early)")
    fig.tight_layout()
    return _save(fig, out_path)


def _scaled(frame: pd.DataFrame, info: SearchInfo) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Each parameter on [0, 1] (log10 for log-uniform; categories by their index); also the tick
    labels (low, high) of each axis."""
    out, ticks = pd.DataFrame(index=frame.index), []
    for p in info.params:
        if p.numeric:
            v = frame[p.key].astype(float)
            lo, hi = float(p.low), float(p.high)
            if p.log and lo > 0:
                v, lo_t, hi_t = np.log10(v), math.log10(lo), math.log10(hi)
            else:
                lo_t, hi_t = lo, hi
            out[p.key] = (v - lo_t) / (hi_t - lo_t) if hi_t > lo_t else 0.5
            ticks.append((fmt(lo), fmt(hi)))
        else:
            idx = {c: i for i, c in enumerate(p.choices)}
            k = max(len(p.choices) - 1, 1)
            out[p.key] = frame[p.key].astype(str).map(idx).astype(float) / k
            ticks.append((p.choices[0] if p.choices else "", p.choices[-1] if p.choices else ""))
    return out, ticks


def plot_parallel_coordinates(frame: pd.DataFrame, info: SearchInfo,
                              out_path: str | Path) -> Path | None:
    """Every trial as a line through its parameters (each scaled to its range; log10 for
    log-uniform ones) and the final metric, coloured by the metric (finished trials); trials that
    stopped early or failed are grey dashed lines through their parameters only."""
    if frame.empty or not info.params:
        return None
    scaled, ticks = _scaled(frame, info)
    ok = (frame["status"] == FINISHED) & np.isfinite(frame["objective"].astype(float))
    obj = frame["objective"].astype(float)
    lo, hi = (obj[ok].min(), obj[ok].max()) if ok.any() else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    scaled["objective"] = (obj - lo) / span if hi > lo else 0.5
    cols = [p.key for p in info.params] + ["objective"]
    xs = np.arange(len(cols))
    fig, ax = plt.subplots(figsize=(2.0 * len(cols) + 2.5, 4.2))
    cmap = plt.get_cmap("viridis_r" if info.lower_is_better else "viridis")
    for i in frame.index[~ok]:
        ax.plot(xs[:-1], scaled.loc[i, cols[:-1]], color="0.6", ls="--", lw=1, alpha=0.8)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
    for i in frame.index[ok]:  # best last, on top
        ax.plot(xs, scaled.loc[i, cols], color=cmap(norm(obj[i])), lw=2, alpha=0.9, marker="o",
                ms=3)
    for x, (a, b) in zip(xs, ticks + [(fmt(lo), fmt(hi))]):
        ax.axvline(x, color="0.2", lw=0.8)
        ax.text(x, -0.06, a, ha="center", va="top", fontsize=8)
        ax.text(x, 1.06, b, ha="center", va="bottom", fontsize=8)
    names = [info.short(p.key) + (" (log)" if p.numeric and p.log else "") for p in info.params]
    ax.set_xticks(xs, names + [f"{info.metric} (final)"])
    ax.tick_params(axis="x", pad=18)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_xlim(-0.3, len(cols) - 0.7)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=_ylabel(info), pad=0.02)
    ax.plot([], [], color="0.6", ls="--", label="stopped early / failed (no final value)")
    if (~ok).any():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.18))
    ax.set_title(f"Parallel coordinates: {int(ok.sum())} finished of {len(frame)} trials "
                 "(each axis spans its search range)")
    return _save(fig, out_path)


def plot_importance(imp: Importance, info: SearchInfo, out_path: str | Path) -> Path | None:
    """Horizontal bars, most important on top."""
    if not imp.values:
        return None
    items = sorted(imp.values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.0, 0.6 * len(items) + 1.4))
    names = [info.short(k) for k, _ in items]
    ax.barh(names, [v for _, v in items], color="C0")
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(v for _, v in items) * 1.15))
    ax.set(xlabel="importance (fANOVA, sums to 1)",
           title=f"Parameter importance for {info.metric} (n = {imp.n} finished trials)")
    return _save(fig, out_path)


def plot_best_so_far(bsf: pd.DataFrame, info: SearchInfo, out_path: str | Path) -> Path | None:
    """Final metric of each finished trial and the best so far, against trial number (start
    order); stopped trials at their last periodic-eval value (grey ×)."""
    if bsf.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = bsf["number"]
    ok = bsf["value"].notna()
    ax.scatter(x[ok], bsf.loc[ok, "value"], color="C0", s=30, label="finished trial (final)", zorder=3)
    st = (bsf["status"] == STOPPED) & np.isfinite(bsf["last_eval"].astype(float))
    if st.any():
        ax.scatter(x[st], bsf.loc[st, "last_eval"], marker="X", color="0.55", s=40,
                   label=STOP_LABEL, zorder=3)
    if bsf["best"].notna().any():
        ax.step(x, bsf["best"], where="post", color="C3", lw=2, label="best so far")
    bad = ~(ok | st)
    if bad.any():
        for xi in x[bad]:
            ax.axvline(xi, color="C1", lw=0.8, ls=":")
        ax.plot([], [], color="C1", ls=":", label="failed / no value")
    ax.set(xlabel="trial number (start order, from 0)", ylabel=_ylabel(info),
           title=f"Search history: best {info.metric} so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return _save(fig, out_path)


def plot_asha_curves(hist: pd.DataFrame, frame: pd.DataFrame, info: SearchInfo,
                     out_path: str | Path) -> Path | None:
    """The ASHA metric (periodic eval) against training step, one line per trial; stopping points
    marked ×, ASHA's rungs dotted."""
    key = f"eval/{info.asha_metric}"
    sub = hist[hist["key"] == key] if len(hist) else hist
    if sub is None or sub.empty:
        return None
    label = frame.set_index("run_id")["trial"].to_dict()
    status = frame.set_index("run_id")["status"].to_dict()
    sub = sub.assign(trial=sub["run_id"].map(label)).sort_values(["trial", "step"])
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    order = list(frame.sort_values("number")["trial"])
    palette = dict(zip(order, sns.color_palette("husl", len(order))))
    sns.lineplot(data=sub, x="step", y="value", hue="trial", hue_order=order, palette=palette,
                 marker="o", markersize=4, ax=ax, estimator=None, legend=len(order) <= 20)
    stops = [g.iloc[-1] for rid, g in sub.groupby("run_id") if status.get(rid) == STOPPED]
    if stops:
        ax.scatter([s["step"] for s in stops], [s["value"] for s in stops], marker="X", s=110,
                   color="black", zorder=5, label="stopped by ASHA")
    for i, r in enumerate(info.rungs(float(sub["step"].max()))):
        ax.axvline(r, color="0.5", ls=":", lw=1, label="ASHA rung" if i == 0 else None)
    ax.set(xlabel="training step", ylabel=f"{info.asha_metric} (periodic eval)",
           title=f"Periodic eval per trial, ASHA stopping points ({len(stops)} stopped)")
    if len(order) <= 20:
        ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, out_path)


def plot_top_samples(study: StudyRuns, board: pd.DataFrame, info: SearchInfo,
                     out_path: str | Path, k: int = 4, nfe: int = 1) -> Path | None:
    """The `samples/nfe_{nfe}` artifacts of the k best finished trials (scatter for 2-D samples,
    the PNG otherwise)."""
    top = board[board["status"] == FINISHED].head(k)
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, r in top.iterrows():
            d = Path(tmp) / r["run_id"]
            arr = fetch_artifact(study, r["run_id"], f"samples/nfe_{nfe}.npy", d)
            x = np.load(arr) if arr is not None else None
            if x is not None and x.ndim == 2 and x.shape[1] == 2:
                panels.append((r, "xy", x[:2000]))
                continue
            png = fetch_artifact(study, r["run_id"], f"samples/nfe_{nfe}.png", d)
            if png is not None:
                panels.append((r, "img", mpimg.imread(png)))
    if not panels:
        return None
    fig, axs = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.5), squeeze=False)
    for ax, (r, kind, data) in zip(axs.flat, panels):
        if kind == "xy":
            ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.5)
            ax.set_aspect("equal", adjustable="datalim")
        else:
            ax.imshow(data, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        params = ", ".join(f"{info.short(p.key)}={fmt(r[p.key])}" for p in info.params)
        ax.set_title(f"#{fmt(r['rank'])} {r['trial']}: {info.metric}={fmt(r['objective'])}\n{params}",
                     fontsize=8)
    fig.suptitle(f"{nfe}-NFE samples of the best {len(panels)} trials")
    fig.tight_layout()
    return _save(fig, out_path)
