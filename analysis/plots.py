"""Seaborn figures for a study: metric vs NFE, metric vs training step, samples per variant.

Every function saves a PNG (matplotlib's Agg backend, no display needed) and returns its path,
or None when there is nothing to draw (e.g. no sample artifacts). Sample figures read the child
runs' `samples/nfe_{k}.npy` / `samples/nfe_{k}.png` artifacts through MLflow, never the model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import StudyRuns, trials  # noqa: E402
from mfsweep.schema import HIGHER_IS_BETTER, short_axis_name  # noqa: E402

FINISHED = "finished"


def short_keys(axes: list[str]) -> dict[str, str]:
    """Each axis key's short name, as in trial ids (``mfsweep.schema.short_axis_name``)."""
    return {a: short_axis_name(a, axes) for a in axes}


def variant_labels(frame: pd.DataFrame, axes: list[str]) -> pd.Series:
    """'frac_r_neq_t=0.25, tangent=v01' for each row of `frame` (or 'all' without axes)."""
    if not axes:
        return pd.Series("all", index=frame.index)
    names = short_keys(axes)
    return frame[axes].astype(str).apply(
        lambda r: ", ".join(f"{names[a]}={r[a]}" for a in axes), axis=1)


def _save(fig, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_metric_vs_nfe(df: pd.DataFrame, metric: str, axes: list[str], out_path: str | Path,
                       phase: str = "final") -> Path | None:
    """Metric versus NFE (log-2 x axis), one line per variant, error bars = std over seeds. The y label
    says "higher is better" for metrics in `mfsweep.schema.HIGHER_IS_BETTER`, else "lower is better".

    Variants with trials that did not finish get "(k failed)" in the legend.
    """
    sub = df[(df["metric"] == metric) & (df["phase"] == phase)].copy()
    if sub.empty:
        return None
    sub["variant"] = variant_labels(sub, axes)
    per_trial = sub.drop_duplicates("run_id")
    bad = per_trial[per_trial["status"] != FINISHED].groupby("variant").size()
    sub["variant"] = sub["variant"].map(lambda v: f"{v} ({bad[v]} failed)" if v in bad else v)
    ok = sub[(sub["status"] == FINISHED) & np.isfinite(sub["value"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(data=ok, x="nfe", y="value", hue="variant", hue_order=list(dict.fromkeys(
        sub["variant"])), marker="o", errorbar="sd", err_style="bars", ax=ax)
    nfes = sorted(sub["nfe"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(nfes, [str(int(k)) for k in nfes])
    ax.minorticks_off()
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    ax.set(xlabel="NFE (log2)", ylabel=f"{metric} ({phase}, {better} is better)",
           title=f"{metric} vs NFE (mean ± std over seeds)")
    return _save(fig, out_path)


def plot_metric_vs_step(hist: pd.DataFrame, metric: str, axes: list[str],
                        out_path: str | Path) -> Path | None:
    """Metric versus training step from the `eval/` history (one panel per NFE)."""
    sub = hist[hist["metric"] == metric].copy()
    if sub.empty:
        return None
    sub["variant"] = variant_labels(sub, axes)
    has_nfe = sub["nfe"].notna().any()
    if has_nfe:
        sub["nfe"] = sub["nfe"].astype(int)
    grid = sns.relplot(data=sub, x="step", y="value", hue="variant", col="nfe" if has_nfe else None,
                       kind="line", errorbar="sd", marker="o", height=3.2, aspect=1.1,
                       facet_kws={"sharey": False})
    grid.set_axis_labels("training step", metric)
    if has_nfe:
        grid.set_titles("NFE {col_name}")
    source = "eval history" if has_nfe else "train history"
    grid.figure.suptitle(f"{metric} during training ({source}, mean ± std over seeds)", y=1.04)
    return _save(grid.figure, out_path)


def fetch_artifact(study: StudyRuns, run_id: str, path: str, dst: str | Path) -> Path | None:
    """Download one artifact of a run, or None when the run has no such artifact."""
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    if path not in {f.path for f in study.client.list_artifacts(run_id, folder)}:
        return None
    Path(dst).mkdir(parents=True, exist_ok=True)
    with _quiet_downloads():
        return Path(study.client.download_artifacts(run_id, path, str(dst)))


@contextlib.contextmanager
def _quiet_downloads():
    """Switch off MLflow's per-file download progress bar (read at call time) for a moment."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _first_per_variant(study: StudyRuns) -> list[tuple[str, pd.DataFrame]]:
    """(variant label, its trials sorted by seed) in study order."""
    t = trials(study)
    t["variant"] = variant_labels(t, study.row_axes)
    t = t.sort_values("trial_id")
    return [(v, g.sort_values("seed", key=lambda s: s.astype(str))) for v, g in
            t.groupby("variant", sort=False)]


def plot_samples_2d(study: StudyRuns, out_path: str | Path, nfe: int = 1,
                    max_points: int = 2000) -> Path | None:
    """Scatter of the `samples/nfe_{nfe}.npy` points (2-D toys), one panel per variant.

    All seeds of a variant share a panel, one colour per seed. Returns None when no trial has a
    2-D sample array.
    """
    groups = _first_per_variant(study)
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, g in groups:
            pts = []
            for _, r in g.iterrows():
                f = fetch_artifact(study, r["run_id"], f"samples/nfe_{nfe}.npy",
                                   Path(tmp) / r["run_id"])
                if f is not None:
                    x = np.load(f)
                    if x.ndim == 2 and x.shape[1] == 2:
                        pts.append((r["seed"], x[:max_points]))
            panels.append((label, pts, g))
    if not any(p for _, p, _ in panels):
        return None
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, pts, g) in zip(axs.flat, panels):
        for seed, x in pts:
            ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5, label=f"seed {seed}")
        if not pts:
            status = ", ".join(sorted(set(g["status"])))
            ax.text(0.5, 0.5, f"no samples\n({status})", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(label, fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        if pts:
            ax.legend(fontsize=7, markerscale=3, loc="upper right")
    for ax in list(axs.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{nfe}-NFE samples per variant")
    return _save(fig, out_path)


def plot_image_grids(study: StudyRuns, out_path: str | Path,
                     nfes: tuple[int, ...] = (1, 2)) -> Path | None:
    """Sample grids (`samples/nfe_{k}.png`): one row per variant (first finished seed), one
    column per NFE. Returns None when no trial has such an artifact."""
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, g in _first_per_variant(study):
            g = pd.concat([g[g["status"] == FINISHED], g[g["status"] != FINISHED]])
            row = None
            for _, r in g.iterrows():
                imgs = [fetch_artifact(study, r["run_id"], f"samples/nfe_{k}.png",
                                       Path(tmp) / r["run_id"]) for k in nfes]
                if any(i is not None for i in imgs):
                    row = (f"{label} (seed {r['seed']})",
                           [None if i is None else mpimg.imread(i) for i in imgs])
                    break
            cells.append(row or (label, [None] * len(nfes)))
    if all(all(i is None for i in imgs) for _, imgs in cells):
        return None
    fig, axs = plt.subplots(len(cells), len(nfes), figsize=(3.0 * len(nfes), 3.0 * len(cells)),
                            squeeze=False)
    for r, (label, imgs) in enumerate(cells):
        for c, img in enumerate(imgs):
            ax = axs[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(img, interpolation="nearest")
            if r == 0:
                ax.set_title(f"NFE {nfes[c]}")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("Samples per variant")
    return _save(fig, out_path)
