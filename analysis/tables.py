"""Metric-versus-NFE tables (e.g. FID versus NFE) from a tidy study frame (`analysis.load.tidy`).

Rows are the study's variants (every axis except seed), columns are NFEs, a cell is
"mean ± std (n=k)" over the seeds that finished (mean to 4, std to 2 significant digits). std
uses ddof=1 (pandas' default, the sample standard deviation) and is left out when n = 1. The
best mean of each column is marked (bold) when there are at least two variants: the lowest, or the
highest for metrics in `mfsweep.schema.HIGHER_IS_BETTER` (precision, recall, inception_score).
Trials that did not finish are never dropped silently: a cell says e.g. "(n=1; failed 1/2)" and
the "seeds ok" column says "0/2 (all failed)" when no seed of a variant finished.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.paper import COLUMN as PAPER_COLUMN
from analysis.paper import NOTE as PAPER_NOTE
from analysis.paper import METHOD_AXIS, METHOD_COLUMN, METHOD_NUMBERS, method_note, paper_axes, paper_lookup, table_citation
from mfsweep.schema import HIGHER_IS_BETTER

FINISHED = "finished"
DDOF = 1


def direction(metric: str) -> str:
    """'higher is better' for metrics in `HIGHER_IS_BETTER`, else 'lower is better'."""
    return "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"


def format_number(x: float, digits: int = 4) -> str:
    """`digits` significant digits (means use 4: 61.06, 0.1235, 328.9; stds use 2)."""
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


@dataclass
class MetricTable:
    """One metric's table. `summary` is long (one row per variant × NFE) and numeric."""

    metric: str
    phase: str
    axes: list[str]
    nfes: list[int]
    summary: pd.DataFrame
    variants: list[tuple[str, ...]]
    paper: dict[tuple[str, ...], float | None] = field(default_factory=dict)
    paper_table: str | None = None
    paper_sources: list[str] = field(default_factory=list)  # paper tables the values came from
    train_s: dict[tuple[str, ...], float] = field(default_factory=dict)  # mean training seconds per variant
    method_paper: dict[tuple[str, ...], str] = field(default_factory=dict)  # method.name studies

    # -- cells ---------------------------------------------------------------------------
    def stats(self, variant: tuple[str, ...], nfe: int) -> pd.Series:
        s = self.summary
        mask = s["nfe"] == nfe
        for axis, value in zip(self.axes, variant):
            mask &= s[axis] == value
        return s[mask].iloc[0]

    def cell(self, variant: tuple[str, ...], nfe: int, pm: str = " ± ", dash: str = "—") -> str:
        """Cell text: 'mean ± std (n=k[; failed j/N])', or the failure note alone."""
        st = self.stats(variant, nfe)
        notes = [] if not st["notes"] else [st["notes"]]
        if st["n"] == 0:
            return "; ".join(notes) or dash
        text = format_number(st["mean"])
        if st["n"] > 1:
            text += pm + format_number(st["std"], 2)
        return f"{text} ({'; '.join([f'n={int(st.n)}', *notes])})"

    def seeds_ok(self, variant: tuple[str, ...]) -> str:
        st = self.stats(variant, self.nfes[0])
        ok, total = int(st["n_finished"]), int(st["n_total"])
        return f"{ok}/{total}" + (" (all failed)" if ok == 0 else "")

    def is_best(self, variant: tuple[str, ...], nfe: int) -> bool:
        return bool(self.stats(variant, nfe)["best"])

    @property
    def has_paper(self) -> bool:
        return any(v is not None for v in self.paper.values())

    @property
    def has_train_time(self) -> bool:
        return any(math.isfinite(v) for v in self.train_s.values())

    def header(self) -> list[str]:
        cols = [*self.axes, "seeds ok", *(["train s"] if self.has_train_time else []),
                *[f"NFE {k}" for k in self.nfes]]
        return cols + ([METHOD_COLUMN] if self.method_paper else []) + ([PAPER_COLUMN] if self.has_paper else [])

    def caption(self) -> str:
        text = (f"{self.metric} ({self.phase}) versus NFE: mean ± std over seeds (ddof={DDOF}), "
                f"n = finished seeds; {direction(self.metric)}, best per NFE in bold.")
        if self.has_train_time:
            text += " train s: mean training wall time of the finished seeds."
        if self.method_paper:
            text += " " + method_note([v[self.axes.index(METHOD_AXIS)] for v in self.variants])
        if self.has_paper:
            text += " " + PAPER_NOTE.format(cite=table_citation(self.paper_sources))
        return text

    def _rows(self, cell_fn, dash: str, esc, bold) -> list[list[str]]:
        """Body rows as strings; `cell_fn(variant, nfe)` renders an already escaped cell."""
        rows = []
        for v in self.variants:
            cells = [esc(x) for x in v] + [esc(self.seeds_ok(v))]
            if self.has_train_time:
                secs = self.train_s.get(v, math.nan)
                cells.append(f"{secs:.0f}" if math.isfinite(secs) else dash)
            for k in self.nfes:
                c = cell_fn(v, k)
                cells.append(bold(c) if self.is_best(v, k) else c)
            if self.method_paper:
                cells.append(esc(self.method_paper.get(v, dash)))
            if self.has_paper:
                p = self.paper.get(v)
                cells.append(dash if p is None else f"{p:.2f}")
            rows.append(cells)
        return rows

    def cell_latex(self, variant, nfe) -> str:
        """LaTeX cell: escape the plain parts, keep `$\\pm$` as math."""
        parts = self.cell(variant, nfe, pm="\0", dash="---").split("\0")
        return r" $\pm$ ".join(latex_escape(p) for p in parts)

    # -- renderers -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown table (best cells in **bold**) plus its caption."""
        rows = self._rows(lambda v, k: md_escape(self.cell(v, k)), "—", md_escape,
                          lambda c: f"**{c}**")
        head = [md_escape(h) for h in self.header()]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + md_escape(self.caption()) + "\n"

    def to_html(self) -> str:
        """An HTML <table> (best cells in <b>) with a <caption>."""
        rows = self._rows(lambda v, k: html.escape(self.cell(v, k)), "—", html.escape,
                          lambda c: f"<b>{c}</b>")
        out = [f'<table class="metric-table" data-metric="{html.escape(self.metric)}">',
               f"<caption>{html.escape(self.caption())}</caption>", "<thead><tr>"]
        out += [f"<th>{html.escape(h)}</th>" for h in self.header()]
        out.append("</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out) + "\n"

    def to_latex(self, label: str | None = None) -> str:
        """A booktabs table (\\toprule/\\midrule/\\bottomrule; needs \\usepackage{booktabs})."""
        rows = self._rows(self.cell_latex, "---", latex_escape, lambda c: rf"\textbf{{{c}}}")
        head = [latex_escape(h) for h in self.header()]
        spec = "l" * (len(self.axes) + 1) + "r" * (len(head) - len(self.axes) - 1)
        cap = latex_escape(self.caption()).replace("±", r"$\pm$")
        label = re.sub(r"[^A-Za-z0-9:-]+", "-", label or f"tab:{self.metric}-{self.phase}")
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{cap}}}", rf"\label{{{label}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\",
                 r"\midrule", *[" & ".join(r) + r" \\" for r in rows], r"\bottomrule",
                 r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path | None = None) -> str:
        """The numeric long summary as CSV (written to `path` when given)."""
        text = self.summary.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "—": "---", "−": "-"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters: \\ & % $ # _ { } ~ ^."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def md_escape(text: str) -> str:
    """Escape characters that Markdown tables or emphasis would interpret."""
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", str(text))


def _status_notes(statuses: pd.Series, total: int) -> str:
    counts = statuses[statuses != FINISHED].value_counts()
    return "; ".join(f"{s} {c}/{total}" for s, c in sorted(counts.items()))


def metric_table(df: pd.DataFrame, metric: str, axes: list[str], phase: str = "final",
                 paper_table: str | None = None) -> MetricTable:
    """Summarize `df` (from `tidy`) for one metric and phase into a MetricTable.

    Trials with status other than "finished" (or with a non-finite value) do not enter mean/std
    but are counted in the cell's notes and the "seeds ok" column.
    """
    # every trial of the study, so variants whose trials never logged this metric still show
    trials = df.drop_duplicates("run_id")
    sub = df[(df["metric"] == metric) & (df["phase"] == phase)]
    nfes = sorted(int(k) for k in sub["nfe"].unique())
    order = trials.sort_values("trial_id")  # study order: trial ids are t000, t001, ...
    variants = list(dict.fromkeys(tuple(str(r[a]) for a in axes) for _, r in order.iterrows()))
    recs, train_s = [], {}
    for v in variants:
        mask = np.ones(len(trials), bool)
        for a, x in zip(axes, v):
            mask &= (trials[a].astype(str) == x).to_numpy()
        vt = trials[mask]
        total, n_fin = len(vt), int((vt["status"] == FINISHED).sum())
        if "train_s" in vt:
            done = vt.loc[vt["status"] == FINISHED, "train_s"].astype(float)
            train_s[v] = float(done.mean()) if done.notna().any() else math.nan
        for k in nfes:
            rows = sub[sub["run_id"].isin(vt["run_id"]) & (sub["nfe"] == k)]
            ok = rows[(rows["status"] == FINISHED) & np.isfinite(rows["value"])]["value"]
            notes = _status_notes(vt["status"], total)
            missing = n_fin - len(ok)
            if missing > 0:
                notes = "; ".join(x for x in [notes, f"no value {missing}/{total}"] if x)
            recs.append({**dict(zip(axes, v)), "nfe": k, "mean": ok.mean() if len(ok) else math.nan,
                         "std": ok.std(ddof=DDOF) if len(ok) > 1 else math.nan, "n": len(ok),
                         "n_finished": n_fin, "n_total": total, "notes": notes})
    summary = pd.DataFrame(recs, columns=[*axes, "nfe", "mean", "std", "n", "n_finished",
                                          "n_total", "notes"])
    best = summary.groupby("nfe")["mean"].transform("max" if metric in HIGHER_IS_BETTER else "min")
    # with a single variant there is nothing to compare: no bold
    summary["best"] = (summary["mean"] == best) & summary["n"].gt(0) & (len(variants) > 1)
    paper, sources = {}, []
    if paper_table and paper_axes(paper_table) & set(axes):
        for v in variants:
            found = paper_lookup(paper_table, dict(zip(axes, v)))
            paper[v] = None if found is None else found[0]
            if found is not None and found[1] not in sources:
                sources.append(found[1])
        summary["paper_fid_1nfe"] = [paper.get(tuple(str(r[a]) for a in axes))
                                     for _, r in summary.iterrows()]
    method_paper = {}
    if METHOD_AXIS in axes:
        i = list(axes).index(METHOD_AXIS)
        method_paper = {v: METHOD_NUMBERS[v[i]].cell() for v in variants if v[i] in METHOD_NUMBERS}
    return MetricTable(metric, phase, list(axes), nfes, summary, variants, paper, paper_table,
                       sorted(sources), train_s, method_paper)


def study_tables(df: pd.DataFrame, axes: list[str], phase: str = "final",
                 paper_table: str | None = None) -> dict[str, MetricTable]:
    """One MetricTable per metric found in `df` for `phase` (e.g. {'swd': ..., 'energy': ...})."""
    metrics = sorted(df.loc[df["phase"] == phase, "metric"].unique())
    return {m: metric_table(df, m, axes, phase, paper_table) for m in metrics}
