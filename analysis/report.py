"""Ablation report for one study: HTML (self-contained) and Markdown, logged back to MLflow.

    python -m analysis.report STUDY_NAME --tracking-uri sqlite:///mlflow.db --out reports/STUDY

The report is built from MLflow only (analysis.load): study name and description, resolved base
config, what was swept, one metric-vs-NFE table per metric, plots, failed/diverged trials with
their error text, and software versions. Files land in `out_dir` (tables/, plots/, report.md,
report.html) and, with `log_to_mlflow`, under `report/` in the study's parent run.
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib.metadata
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from analysis import load, plots, tables
from analysis.tables import md_escape

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}caption{caption-side:bottom;font-size:.85em;color:#555;text-align:left}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}img{max-width:100%}"""
PACKAGES = ("mlflow", "pandas", "numpy", "seaborn", "matplotlib", "torch", "mfsweep")


def software_versions() -> list[tuple[str, str]]:
    """(package, version) for python and PACKAGES; torch via metadata only (never imported)."""
    out = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def _base_config(study: load.StudyRuns) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        f = plots.fetch_artifact(study, study.parent.info.run_id, "base_config.yaml", tmp)
        return f.read_text() if f else "(no base_config.yaml artifact on the parent run)"


def _swept(study: load.StudyRuns, trials) -> list[list[str]]:
    rows = []
    for axis in study.axes:
        col = "seed" if axis == "seed" else axis
        values = list(dict.fromkeys(trials.sort_values("trial_id")[col].astype(str)))
        rows.append([axis, ", ".join(values), str(len(values))])
    return rows


def _metric_tags(study: load.StudyRuns) -> list[list[str]]:
    """`metric.{name}.{field}` tags of the trials (extractor, resize, num_samples): FID values
    are only comparable with the same extractor and resize mode (docs/method.md §7)."""
    seen: dict[tuple[str, str], list[str]] = {}
    for run in study.children:
        for key, value in run.data.tags.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "metric":
                vals = seen.setdefault((parts[1], parts[2]), [])
                if value not in vals:
                    vals.append(value)
    return [[m, f, ", ".join(v)] for (m, f), v in sorted(seen.items())]


def build_sections(study: load.StudyRuns, out_dir: Path) -> tuple[list[tuple], dict[str, Path]]:
    """Write tables/ and plots/ under `out_dir`; return the report as a list of nodes.

    Nodes: ("h2" | "h3", text), ("p", text), ("pre", text), ("grid", header, rows),
    ("table", MetricTable), ("img", path, caption).
    """
    files: dict[str, Path] = {}
    df, trials = load.tidy(study), load.trials(study)
    phase = "final" if (df["phase"] == "final").any() else "eval"
    axes = study.row_axes
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    status = trials["status"].value_counts()
    nodes: list[tuple] = [
        ("p", study.description or "(no description)"),
        ("grid", ["", ""], [
            ["experiment", f"{study.experiment_name} (id {study.experiment_id})"],
            ["parent run", study.parent.info.run_id],
            ["mfsweep version / git commit",
             f"{study.tag('mfsweep.version', '?')} / {study.tag('mfsweep.git_commit', '?')}"],
            ["trials", ", ".join(f"{n} {s}" for s, n in status.items()) or "none"],
            ["paper table", study.paper_table or "—"]]),
        ("h2", "What was swept"), ("grid", ["axis", "values", "count"], _swept(study, trials)),
        ("h2", f"Results ({phase} evaluation)"),
    ]
    if phase == "eval":
        nodes.append(("p", "No final evaluation was logged; showing the last periodic eval."))
    provenance = _metric_tags(study)
    if provenance:
        nodes.append(("grid", ["metric", "field", "value(s)"], provenance))
    for metric, table in tables.study_tables(df, axes, phase, study.paper_table).items():
        for ext, text in [("md", table.to_markdown()), ("tex", table.to_latex()),
                          ("html", table.to_html()), ("csv", table.to_csv())]:
            files[f"table_{metric}_{ext}"] = out_dir / "tables" / f"{metric}.{ext}"
            files[f"table_{metric}_{ext}"].write_text(text)
        nodes += [("h3", f"{metric} versus NFE"), ("table", table)]
        p = plots.plot_metric_vs_nfe(df, metric, axes, out_dir / "plots" / f"{metric}_vs_nfe.png",
                                     phase)
        if p:
            files[f"plot_{metric}_vs_nfe"] = p
            nodes.append(("img", p, f"{metric} versus NFE (log-2 axis), error bars: std over "
                                    "seeds"))
    hist = load.history(study)
    nodes.append(("h2", "Training curves"))
    for metric in sorted(hist["metric"].unique()):
        p = plots.plot_metric_vs_step(hist, metric, axes,
                                      out_dir / "plots" / f"{metric}_vs_step.png")
        if p:
            files[f"plot_{metric}_vs_step"] = p
            nodes.append(("img", p, f"{metric} versus training step"))
    nodes.append(("h2", "Samples"))
    for key, fn, cap in [("samples_2d", plots.plot_samples_2d, "1-NFE samples (2-D)"),
                         ("samples_grid", plots.plot_image_grids, "sample grids, NFE 1 and 2")]:
        if key == "samples_grid" and "plot_samples_2d" in files:
            continue  # 2-D toys: the scatter says it better than a rendered PNG
        p = fn(study, out_dir / "plots" / f"{key}.png")
        if p:
            files[f"plot_{key}"] = p
            nodes.append(("img", p, cap))
    bad = trials[trials["status"] != "finished"]
    nodes += [("h2", "Failed, diverged or unfinished trials")]
    nodes.append(("grid", ["trial", "status", "error"],
                  [[r.trial_id, r.status, r.error or "(no error text)"] for r in bad.itertuples()])
                 if len(bad) else ("p", "None: every trial finished."))
    nodes += [("h2", "Base config (resolved)"), ("pre", _base_config(study)),
              ("h2", "Software versions"), ("grid", ["package", "version"],
                                           [list(v) for v in software_versions()])]
    return nodes, files


def render_html(title: str, nodes: list[tuple]) -> str:
    """Self-contained HTML: inline CSS, images as base64 data URIs."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for node in nodes:
        kind = node[0]
        if kind in ("h2", "h3", "p"):
            out.append(f"<{kind}>{e(node[1])}</{kind}>")
        elif kind == "pre":
            out.append(f"<pre>{e(node[1])}</pre>")
        elif kind == "grid":
            head = "".join(f"<th>{e(h)}</th>" for h in node[1]) if any(node[1]) else ""
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                           for r in node[2])
            out.append(f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>")
        elif kind == "table":
            out.append(node[1].to_html())
        elif kind == "img":
            data = base64.b64encode(Path(node[1]).read_bytes()).decode()
            out.append(f'<figure><img alt="{e(node[2])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(node[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(title: str, nodes: list[tuple], out_dir: Path) -> str:
    """Markdown with images as files relative to `out_dir`."""
    out = [f"# {md_escape(title)}", ""]
    for node in nodes:
        kind = node[0]
        if kind in ("h2", "h3"):
            out += [f"{'#' * int(kind[1])} {md_escape(node[1])}", ""]
        elif kind == "p":
            out += [md_escape(node[1]), ""]
        elif kind == "pre":
            out += ["```yaml", node[1].rstrip("\n"), "```", ""]
        elif kind == "grid":
            head = node[1] if any(node[1]) else ["field", "value"]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join(["---"] * len(head)) + "|")
            out += ["| " + " | ".join(md_escape(str(c)).replace("\n", " ") for c in r) + " |"
                    for r in node[2]]
            out.append("")
        elif kind == "table":
            out += [node[1].to_markdown(), ""]
        elif kind == "img":
            rel = Path(node[1]).relative_to(out_dir).as_posix()
            out += [f"![{md_escape(node[2])}]({rel})", ""]
    return "\n".join(out)


def write_report(study_name: str, tracking_uri: str | None = None,
                 out_dir: str | Path | None = None, experiment: str | None = None,
                 log_to_mlflow: bool = True) -> dict[str, Path]:
    """Write report.html / report.md (+ tables/, plots/) for the study's latest execution.

    `out_dir` defaults to reports/<study_name>. Returns {"html", "markdown", "dir",
    "table_<metric>_<ext>", "plot_<name>": path}. With `log_to_mlflow`, the whole folder is
    logged as artifacts of the study's parent run under `report/`.
    """
    study = load.load_study(study_name, tracking_uri, experiment)
    out = Path(out_dir) if out_dir is not None else Path("reports") / study_name
    out.mkdir(parents=True, exist_ok=True)
    nodes, files = build_sections(study, out)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Study {study_name} — experiment {study.experiment_name}"
    nodes.insert(0, ("p", f"Generated {stamp} from MLflow ({tracking_uri or 'default URI'})."))
    files["html"] = out / "report.html"
    files["html"].write_text(render_html(title, nodes), encoding="utf-8")
    files["markdown"] = out / "report.md"
    files["markdown"].write_text(render_markdown(title, nodes, out), encoding="utf-8")
    files["dir"] = out
    if log_to_mlflow:
        study.client.log_artifacts(study.parent.info.run_id, str(out), "report")
    return files


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m analysis.report STUDY_NAME [--tracking-uri URI] [--out DIR] ..."""
    ap = argparse.ArgumentParser(prog="python -m analysis.report",
                                 description="Write the ablation report of an mfsweep study.")
    ap.add_argument("study", help="study name (the parent run's mfsweep.study tag)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    ap.add_argument("--experiment", default=None, help="experiment name (default: study name)")
    ap.add_argument("--out", default=None, help="output folder (default: reports/STUDY)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = ap.parse_args(argv)
    try:
        files = write_report(args.study, args.tracking_uri, args.out, args.experiment,
                             not args.no_log)
    except load.StudyNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {files['html']}\n        {files['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
