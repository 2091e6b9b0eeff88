"""Ablation report for one study: HTML (self-contained) and Markdown, logged back to MLflow.

    python -m analysis.report STUDY_NAME --tracking-uri sqlite:///mlflow.db --out reports/STUDY

The report is built from MLflow only (analysis.load): study name and description, resolved base
config, what was swept, one metric-vs-NFE table per metric, plots, failed/diverged trials with
their error text, and software versions. For a search study (`search.algorithm: random | optuna`)
the per-variant tables give way to the search sections (analysis.search, analysis.search_plots):
what was searched, a leaderboard with the best trial's config, parameter effects, parameter
importance, the search history, and the search rebuilt as an Optuna study (JournalStorage file
`optuna/journal.log`, also logged on the parent run). Files land in `out_dir` (tables/, plots/, report.md,
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

from analysis import load, plots, search, tables
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


def _grid_sections(study: load.StudyRuns, df, trials, phase: str, axes: list[str], out_dir: Path,
                   nodes: list[tuple], files: dict[str, Path], provenance: list[list[str]],
                   metrics=None, nfes=None) -> None:
    """What was swept and one metric-versus-NFE table (and plot) per metric: a grid study. Each
    table compares every axis value with the baseline (the study's `baseline:`, else the base
    config's value, else the first; analysis.tables.study_baselines) at ``metrics`` × ``nfes``
    (None: all)."""
    nodes += [("h2", "What was swept"), ("grid", ["axis", "values", "count"], _swept(study, trials)),
              ("h2", f"Results ({phase} evaluation)")]
    if phase == "eval":
        nodes.append(("p", "No final evaluation was logged; showing the last periodic eval."))
    if provenance:
        nodes.append(("grid", ["metric", "field", "value(s)"], provenance))
    baseline = tables.study_baselines(df, axes, study.tag("mfsweep.baseline") or None, _base_config(study))
    for metric, table in tables.study_tables(df, axes, phase, study.paper_table, metrics=metrics, nfes=nfes,
                                             baseline=baseline).items():
        for ext, text in [("md", table.to_markdown()), ("tex", table.to_latex()),
                          ("html", table.to_html()), ("csv", table.to_csv())]:
            files[f"table_{metric}_{ext}"] = out_dir / "tables" / f"{metric}.{ext}"
            files[f"table_{metric}_{ext}"].write_text(text)
        files[f"table_{metric}_differences_csv"] = out_dir / "tables" / f"{metric}_differences.csv"
        table.differences_csv(files[f"table_{metric}_differences_csv"])
        nodes += [("h3", f"{metric} versus NFE"), ("table", table)]
        p = plots.plot_metric_vs_nfe(df, metric, axes, out_dir / "plots" / f"{metric}_vs_nfe.png",
                                     phase)
        if p:
            files[f"plot_{metric}_vs_nfe"] = p
            nodes.append(("img", p, f"{metric} versus NFE (log-2 axis), error bars: std over "
                                    "seeds"))


def _img(nodes: list[tuple], files: dict[str, Path], key: str, path, caption: str) -> None:
    if path:
        files[f"plot_{key}"] = path
        nodes.append(("img", path, caption))


def _search_sections(study: load.StudyRuns, out_dir: Path, nodes: list[tuple],
                     files: dict[str, Path], provenance: list[list[str]], hist,
                     log_to_mlflow: bool):
    """A search study's sections (analysis.search): what was searched, leaderboard and best
    config, parameter effects, importance, search history, the Optuna journal."""
    from analysis import search_plots as sp

    info = search.search_info(study)
    frame = search.trial_frame(study, info, hist)
    board = search.leaderboard(frame, info)
    plot_dir = out_dir / "plots"
    # -- what was searched
    sampler = f" (sampler {info.sampler})" if info.algorithm == "optuna" and info.sampler else ""
    seeds = f", seeds {', '.join(map(str, info.seeds))}" if info.seeds else ""
    text = (f"{info.algorithm} search{sampler} over {len(info.params)} parameter(s): "
            f"{len(frame)} trials (num_samples {info.num_samples or '?'}{seeds}); search metric "
            f"{info.metric}, {info.direction_text} (search.mode = {info.mode}).")
    if info.asha:
        sch = info.scheduler
        rungs = ", ".join(map(str, info.rungs()))
        text += (f" Early stopping: ASHA on the periodic eval of {info.asha_metric}, grace period "
                 f"{sch.get('grace_period')} steps, reduction factor {sch.get('reduction_factor')}"
                 f"{f' (rungs at steps {rungs})' if rungs else ''}; a trial it stops is not a failure.")
    else:
        text += " No early stopping."
    source = {"study": f"{info.source} on the parent run", "inferred": "inferred from the values"}
    nodes += [("h2", "What was searched"), ("p", text),
              ("grid", ["parameter", "distribution", "range / choices", "distribution from"],
               [[p.key, *p.describe(), source[p.source]] for p in info.params])]
    nodes += [("p", n) for n in info.notes]
    # -- leaderboard and best config
    header, rows = search.leaderboard_rows(board, info)
    nodes += [("h2", "Leaderboard"),
              ("p", f"Trials sorted by the final {info.metric} ({info.direction_text}); trials "
                    "stopped early follow, ordered by their last periodic-eval value, then failed "
                    "ones. Numbers to 4 significant digits; \"≈\" marks a run's MLflow duration "
                    "where no training time was logged (trials stopped early).")]
    if provenance:
        nodes.append(("grid", ["metric", "field", "value(s)"], provenance))
    nodes.append(("grid", header, rows))
    files["table_leaderboard_csv"] = out_dir / "tables" / "leaderboard.csv"
    board.drop(columns=["start", "end"]).to_csv(files["table_leaderboard_csv"], index=False)
    best = search.best_trial(board)
    nodes.append(("h3", "Best trial's config"))
    if best is None:
        nodes.append(("p", "No trial finished with a final value: no best config."))
    else:
        params = ", ".join(f"{info.short(p.key)} = {search.fmt(best[p.key])}" for p in info.params)
        head = (f"# best trial {best['trial_id']}: {info.metric} = {search.fmt(best['objective'])}\n"
                f"# ({params}); its resolved config without name and seed\n")
        cfg = search.best_config_yaml(study, best["run_id"], head)
        files["best_config"] = out_dir / "best_config.yaml"
        files["best_config"].write_text(cfg)
        nodes += [("p", f"Trial {best['trial']} ({info.metric} = {search.fmt(best['objective'])}"
                        f"; {params}; MLflow run {best['run_id']}). Its full resolved config, "
                        "ready to paste as a new study's base (also in best_config.yaml):"),
                  ("pre", cfg)]
    # -- parameter effects
    best_id = best["run_id"] if best is not None else None
    nodes.append(("h2", "Parameter effects"))
    _img(nodes, files, "search_effects",
         sp.plot_param_effects(frame, info, plot_dir / "search_effects.png", best_id),
         f"final {info.metric} against each searched parameter (log x axis for log-uniform "
         "ones); × = trials stopped early, at their last periodic eval; ★ = best")
    _img(nodes, files, "search_parallel",
         sp.plot_parallel_coordinates(frame, info, plot_dir / "search_parallel.png"),
         "parallel coordinates of all trials, coloured by the final metric")
    # -- importance
    imp = search.importance(frame, info)
    nodes += [("h2", "Parameter importance"),
              ("p", search.IMPORTANCE_NOTE.format(metric=info.metric) + " Shown from "
               f"{imp.need} finished trials on (3 per searched parameter, at least 4): with "
               "fewer, a parameter that does not matter was ranked first in a quarter or more of "
               "simulated studies.")]
    if imp.values:
        nodes.append(("grid", ["parameter", "importance"],
                      [[k, f"{v:.2f}"] for k, v in imp.values.items()]))
        _img(nodes, files, "search_importance",
             sp.plot_importance(imp, info, plot_dir / "search_importance.png"),
             f"parameter importance (fANOVA), n = {imp.n} finished trials")
    else:
        nodes.append(("p", imp.note))
    # -- history
    nodes.append(("h2", "Search history"))
    _img(nodes, files, "search_history",
         sp.plot_best_so_far(search.best_so_far(frame, info), info,
                             plot_dir / "search_history.png"),
         f"best {info.metric} so far against trial number (start order)")
    if info.asha:
        _img(nodes, files, "search_asha",
             sp.plot_asha_curves(hist, frame, info, plot_dir / "search_asha.png"),
             f"periodic-eval {info.asha_metric} against training step per trial; × = stopped "
             "by ASHA, dotted = ASHA rungs")
    # -- the Optuna study
    journal = search.write_journal(frame, info, out_dir / search.JOURNAL_ARTIFACT, study.study_name,
                                   hist)
    files["optuna_journal"] = journal
    where = (f"logged as artifact {search.JOURNAL_ARTIFACT} of the parent run "
             f"{study.parent.info.run_id} and " if log_to_mlflow else "")
    nodes += [("h2", "Optuna study"),
              ("p", f"The search rebuilt from MLflow as an Optuna study named {study.study_name!r} "
                    f"(finished = COMPLETE, stopped early = PRUNED with the periodic eval as "
                    f"intermediate values, failed = FAIL) is {where}saved in this report's folder "
                    f"as {search.JOURNAL_ARTIFACT} (Optuna JournalStorage, file backend). Open it "
                    f"with: optuna-dashboard {search.JOURNAL_ARTIFACT} (from this folder), or in "
                    f"Python: optuna.load_study(study_name={study.study_name!r}, storage=optuna."
                    "storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))).")]
    return frame, info, board


def build_sections(study: load.StudyRuns, out_dir: Path, log_to_mlflow: bool = True, *,
                   metrics=None, nfes=None) -> tuple[list[tuple], dict[str, Path]]:
    """Write tables/ and plots/ under `out_dir`; return the report as a list of nodes.

    Nodes: ("h2" | "h3", text), ("p", text), ("pre", text), ("grid", header, rows),
    ("table", MetricTable), ("img", path, caption). A search study (analysis.search.is_search)
    gets the search sections in place of the per-variant tables, training curves per trial, the
    best trials' samples, and its Optuna journal (`files["optuna_journal"]`).
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
    ]
    provenance = _metric_tags(study)
    hist = load.history(study)
    searching = search.is_search(study)
    if searching:
        frame, info, board = _search_sections(study, out_dir, nodes, files, provenance, hist,
                                              log_to_mlflow)
    else:
        _grid_sections(study, df, trials, phase, axes, out_dir, nodes, files, provenance, metrics, nfes)
    nodes.append(("h2", "Training curves"))
    curves, curve_axes = hist, axes
    if searching:  # one line per trial, named by its number (the leaderboard's "trial")
        curves = hist.assign(trial=hist["run_id"].map(frame.set_index("run_id")["trial"]))
        curve_axes = ["trial"]
    for metric in sorted(hist["metric"].unique()):
        p = plots.plot_metric_vs_step(curves, metric, curve_axes,
                                      out_dir / "plots" / f"{metric}_vs_step.png")
        if p:
            files[f"plot_{metric}_vs_step"] = p
            nodes.append(("img", p, f"{metric} versus training step"))
    nodes.append(("h2", "Samples"))
    if searching:
        from analysis import search_plots

        _img(nodes, files, "samples_best",
             search_plots.plot_top_samples(study, board, info, out_dir / "plots" / "samples_best.png"),
             "1-NFE samples of the best trials")
    else:
        for key, fn, cap in [("samples_2d", plots.plot_samples_2d, "1-NFE samples (2-D)"),
                             ("samples_grid", plots.plot_image_grids, "sample grids, NFE 1 and 2")]:
            if key == "samples_grid" and "plot_samples_2d" in files:
                continue  # 2-D toys: the scatter says it better than a rendered PNG
            p = fn(study, out_dir / "plots" / f"{key}.png")
            if p:
                files[f"plot_{key}"] = p
                nodes.append(("img", p, cap))
    nodes += [("h2", "Failed, diverged or unfinished trials")]
    if searching:  # a trial ASHA stopped is in the leaderboard, not here
        bad = frame[(frame["status"] != "finished") & ~frame["status_text"].str.endswith("by ASHA")]
        nodes.append(("grid", ["trial", "status", "error"],
                      [[r.trial_id, r.status_text, r.error or "(no error text)"]
                       for r in bad.itertuples()])
                     if len(bad) else ("p", "None: every trial finished or was stopped early by "
                                            "ASHA (see the leaderboard)."))
    else:
        bad = trials[trials["status"] != "finished"]
        nodes.append(("grid", ["trial", "status", "error"],
                      [[r.trial_id, r.status, r.error or "(no error text)"] for r in bad.itertuples()])
                     if len(bad) else ("p", "None: every trial finished."))
    versions = [list(v) for v in software_versions()]
    if searching:
        try:
            versions.append(["optuna", importlib.metadata.version("optuna")])
        except importlib.metadata.PackageNotFoundError:
            versions.append(["optuna", "not installed"])
    nodes += [("h2", "Base config (resolved)"), ("pre", _base_config(study)),
              ("h2", "Software versions"), ("grid", ["package", "version"], versions)]
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
                 log_to_mlflow: bool = True, *, metrics=None, nfes=None) -> dict[str, Path]:
    """Write report.html / report.md (+ tables/, plots/) for the study's latest execution.

    `out_dir` defaults to reports/<study_name>. Returns {"html", "markdown", "dir",
    "table_<metric>_<ext>", "plot_<name>": path}; a search study adds "table_leaderboard_csv",
    "best_config" (best_config.yaml) and "optuna_journal" (optuna/journal.log). With
    `log_to_mlflow`, the whole folder is logged as artifacts of the study's parent run under
    `report/`, and a search study's Optuna journal also as `optuna/journal.log`. ``metrics`` /
    ``nfes`` (lists; None: all) choose where a grid study's tables compare each value with the
    baseline; an unknown one raises ValueError naming what is available.
    """
    study = load.load_study(study_name, tracking_uri, experiment)
    out = Path(out_dir) if out_dir is not None else Path("reports") / study_name
    out.mkdir(parents=True, exist_ok=True)
    nodes, files = build_sections(study, out, log_to_mlflow, metrics=metrics, nfes=nfes)
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
        if "optuna_journal" in files:  # where optuna-dashboard users look for it
            study.client.log_artifact(study.parent.info.run_id, str(files["optuna_journal"]),
                                      search.JOURNAL_ARTIFACT.rsplit("/", 1)[0])
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
    ap.add_argument("--metric", action="append", help="metric compared with the baseline (repeatable)")
    ap.add_argument("--nfe", type=int, action="append", help="NFE compared with the baseline (repeatable)")
    args = ap.parse_args(argv)
    try:
        files = write_report(args.study, args.tracking_uri, args.out, args.experiment,
                             not args.no_log, metrics=args.metric, nfes=args.nfe)
    except (load.StudyNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {files['html']}\n        {files['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
