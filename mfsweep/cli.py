"""Command line: ``mfsweep train | validate | run | report | ui | encode``.

    mfsweep train CONFIG.yaml [--set KEY=VALUE ...] [--out DIR] [--no-progress]
    mfsweep validate STUDY.yaml [--set KEY=VALUE ...] [--smoke]
    mfsweep run STUDY.yaml [--dry-run] [--set KEY=VALUE ...] [--smoke] [--tracking-uri URI]
                           [--address RAY_ADDRESS] [--max-concurrent N] [--restart] [--num-cpus N] [--yes]
    mfsweep report STUDY.yaml [--smoke] [--tracking-uri URI] [--out DIR] [--metric M ...] [--nfe K ...]
    mfsweep ui [STUDY.yaml] [--smoke] [--tracking-uri URI] [--host H] [--port P] [--workers N] [--no-browser]
    mfsweep encode IMAGE_DIR OUT --vae PATH_OR_NAME [--resolution 256] [--batch-size N] [--device D]

``--set`` on a study edits the study file's own keys (``base.train.steps=200``, ``seeds=[0]``); on a
trial config, the config's keys (``train.steps=500``). The tracking URI is ``--tracking-uri`` >
``$MLFLOW_TRACKING_URI`` > the study's ``tracking.uri`` > ``sqlite:///mlflow.db``; the Ray address is
``--address`` > ``$RAY_ADDRESS`` > a local Ray.

Exit codes: 0 success; 2 invalid input (every problem listed, nothing written); 3 a study finished
but some trials failed or diverged (``run``), or a training run diverged (``train``); 1 internal
error; 130 interrupted, 143 stopped by SIGTERM (``run``: rerun the same command to resume).

Known errors (bad config or study, missing data, a study not in the tracking store) print one line
per problem and exit 2. Any other exception is an internal error: one line on stderr, the traceback
saved to ``$MFSWEEP_ERROR_DIR`` (default: the temp folder) as ``mfsweep-error-<time>-<pid>.log``.
``run`` refuses a study of more than its ``max_trials`` trials (default 1000) without ``--yes``.

Everything heavy (torch, Ray, MLflow, rich) is imported inside the command that needs it, so
``mfsweep --help`` and ``mfsweep validate`` start quickly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM: ``mfsweep run`` stopped gracefully by SIGTERM (rerun to resume)


def _cmd_train(args) -> int:
    from mfsweep.config import load_config_file
    from mfsweep.training.train import train

    cfg = load_config_file(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = train(cfg, out, progress=not args.no_progress)
    print(f"{result.status} at step {result.step} in {result.train_time_s:.1f} s; outputs in {out}")
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:24s} {value:.4f}")
    if result.status != "finished":
        print(f"error: {result.error}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _load(args):
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import load_study

    study, text = load_study(args.study, args.set, smoke=getattr(args, "smoke", False))
    n = study.trial_count
    if n > study.max_trials and args.func is _cmd_run and not (args.dry_run or args.yes):  # before any expansion
        from mfsweep.config import ConfigError

        raise ConfigError([("max_trials", f"the study would launch {n:,} trials, more than max_trials "
                                          f"{study.max_trials:,}; pass --yes to launch them, or raise max_trials")],
                          f"study {args.study}")
    return make_plan(study, f"study {args.study}"), text


def trial_table(plan, limit: int = 200):
    """The plan's trials as a rich table (axis values by short name, seed last)."""
    from rich.table import Table

    from mfsweep.schema import short_axis_name

    s = plan.study
    title = f"{s.name}: {len(plan.trials) or s.search.num_samples} trials ({s.search.algorithm})"
    table = Table(title=title, title_justify="left")
    keys = plan.axis_keys
    table.add_column("#", justify="right")
    table.add_column("trial id", no_wrap=True)
    for key in keys:
        name = short_axis_name(key, keys)
        table.add_column(name, overflow="fold", min_width=min(len(name), 14))
    if s.search.algorithm == "optuna":
        for axis in plan.axes:
            shown = ", ".join(map(str, axis.choices())) if axis.values else f"{axis.kind}{list(axis.bounds)}"
            table.add_row("", "(optuna)", *[shown if k == axis.leaves[0] else "" for k in keys])
    for t in plan.trials[:limit]:
        table.add_row(str(t.index), t.trial_id, *[t.tags.get(k, "") for k in keys])
    if len(plan.trials) > limit:
        table.add_row("…", f"{len(plan.trials) - limit} more", *[""] * len(keys))
    return table


def _describe(plan, console) -> None:
    s, base = plan.study, plan.base_config
    console.print(trial_table(plan))
    sched = s.scheduler.name if s.scheduler.name == "none" else f"asha on {s.scheduler.metric or plan.metric}"
    console.print(f"metric {plan.metric}; scheduler {sched}; per trial {s.resources.cpu:g} CPU"
                  f"{f', {s.resources.gpu:g} GPU' if s.resources.gpu else ''}; {base.train.steps} steps; "
                  f"eval NFE {base.eval.nfe} on {base.eval.num_samples} samples", highlight=False)
    if s.trial_count > s.max_trials:
        console.print(f"[yellow]warning[/]: {s.trial_count:,} trials, more than max_trials {s.max_trials:,}: "
                      "`mfsweep run` asks for --yes", highlight=False)


def make_console():
    """Rich console; 160 columns when writing to a file or pipe (logs keep whole trial ids)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _cmd_validate(args) -> int:
    plan, _ = _load(args)
    console = make_console()
    _describe(plan, console)
    console.print(f"[green]valid[/]: {args.study}")
    return EXIT_OK


def summary_table(outcome, metric: str | None):
    from rich.table import Table

    table = Table(title="trials", title_justify="left")
    for col in ("trial id", "status", metric or "metric", "train s", "error"):
        table.add_column(col, overflow="fold")
    for r in outcome.rows:
        value, secs = r.get(f"final/{metric}"), r.get("time/train_s")
        colour = {"finished": "green", "stopped": "yellow", "running": "yellow"}.get(r["status"], "red")
        table.add_row(r["trial_id"], f"[{colour}]{r['status']}[/]", "" if value is None else f"{value:.4g}",
                      "" if secs is None else f"{secs:.0f}", r["error"][:300])
    return table


def _cmd_run(args) -> int:
    plan, text = _load(args)
    console = make_console()
    _describe(plan, console)
    if args.dry_run:
        console.print("dry run: nothing started")
        return EXIT_OK
    import yaml

    from mfsweep.sweep.runner import run_plan
    if args.smoke:
        from mfsweep.sweep.smoke import prepare_smoke_data

        prepare_smoke_data(plan)
    from mfsweep.sweep.tracking import resolve_tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = resolve_tracking_uri(args.tracking_uri, plan.study.tracking.uri)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    resolved = yaml.safe_dump(plan.study.model_dump(), sort_keys=False) if args.set else None
    outcome = run_plan(plan, text, tracking_uri=uri, address=address, max_concurrent=args.max_concurrent,
                       restart=args.restart, num_cpus=args.num_cpus, resolved_yaml=resolved, console=console)
    console.print(summary_table(outcome, plan.metric))
    verb = "resumed" if outcome.resumed else "ran"
    console.print(f"{verb} execution {outcome.execution_id} in {outcome.wall_s:.0f} s; MLflow {uri} "
                  f"(parent run {outcome.parent_run_id}); Ray experiment {outcome.experiment_path}", highlight=False)
    if outcome.interrupted:
        by = f" by {outcome.stop_signal}" if outcome.stop_signal else ""
        console.print(f"[yellow]interrupted{by}[/]: rerun the same command to resume")
        return EXIT_TERMINATED if outcome.stop_signal == "SIGTERM" else EXIT_INTERRUPTED
    if outcome.failed:
        bad = ", ".join(f"{r['trial_id']} ({r['status']})" for r in outcome.failed)
        console.print(f"[red]{len(outcome.failed)} trial(s) did not finish[/]: {bad}")
        return EXIT_PARTIAL
    return EXIT_OK


def _cmd_encode(args) -> int:
    from mfsweep.data import DataError
    from mfsweep.data.encode import encode_folder

    if args.resolution < 8 or args.batch_size < 1:
        raise DataError(f"--resolution must be ≥ 8 and --batch-size ≥ 1, got {args.resolution} and {args.batch_size}")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    summary = encode_folder(args.image_dir, args.out, vae=args.vae, resolution=args.resolution,
                            batch_size=args.batch_size, device=device, posterior=args.posterior, seed=args.seed,
                            copy_vae=args.copy_vae, progress=not args.no_progress)
    print(f"encoded {summary['count']} images into {args.out}: latents {summary['shape']} {summary['dtype']}, "
          f"scaling factor {summary['scaling_factor']}, VAE {summary['vae']}, {summary['seconds']:.1f} s")
    return EXIT_OK


def _cmd_report(args) -> int:
    from analysis.report import write_report  # analysis/ ships in the same distribution
    from mfsweep.sweep.study import load_study
    from mfsweep.sweep.tracking import resolve_tracking_uri

    study, _ = load_study(args.study, args.set, smoke=args.smoke)
    uri = resolve_tracking_uri(args.tracking_uri, study.tracking.uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # MLflow would create it
        from mfsweep.config import ConfigError

        raise ConfigError([("--tracking-uri", f"no MLflow store at {uri.removeprefix('sqlite:///')}: run "
                                              f"`mfsweep run {args.study}` first, or pass the --tracking-uri it used")],
                          "report")
    try:
        files = write_report(study.name, tracking_uri=uri, out_dir=args.out, experiment=study.experiment,
                             metrics=args.metric, nfes=args.nfe)
    except ValueError as exc:
        if not (args.metric or args.nfe):
            raise
        from mfsweep.config import ConfigError  # --metric / --nfe not in the study: bad input

        raise ConfigError([("--metric/--nfe", str(exc))], "report") from None
    for key, path in files.items():
        if key in ("html", "markdown", "dir"):
            print(f"{key}: {path}")
    return EXIT_OK


def _cmd_ui(args) -> int:
    from analysis.ui import ui_command
    from mfsweep.sweep.tracking import resolve_tracking_uri

    study = None
    if args.study:
        from mfsweep.sweep.study import load_study

        study = load_study(args.study, smoke=args.smoke)[0]
    elif args.smoke:
        print("error: --smoke needs a STUDY.yaml", file=sys.stderr)
        return EXIT_INVALID
    return ui_command(resolve_tracking_uri(args.tracking_uri, study.tracking.uri if study else None),
                      host=args.host, port=args.port, experiment=study.experiment if study else None,
                      study=study.name if study else None, browser=not args.no_browser, workers=args.workers)


def add_study_commands(sub) -> None:
    """Register validate / run / report / ui on the ``mfsweep`` argument parser."""
    def common(p):
        p.add_argument("study", help="study YAML, e.g. studies/rt_sampling.yaml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a study key, e.g. base.train.steps=200 or seeds=[0]")
        p.add_argument("--smoke", action="store_true",
                       help="shrink the study to minutes on a CPU, offline: tiny backbone of the same family, "
                            "generated data, few steps, small eval (its own experiment: <name>_smoke)")

    v = sub.add_parser("validate", help="check a study file and print its trial table (exit 0 or 2)")
    common(v)
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("run", help="run (or resume) a study on Ray Tune, tracked in MLflow")
    common(r)
    r.add_argument("--dry-run", action="store_true", help="validate and print the trial table only")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the study's, "
                                          "sqlite:///mlflow.db)")
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--max-concurrent", type=int, help="at most N trials at once (new executions)")
    r.add_argument("--restart", action="store_true", help="start a new execution instead of resuming")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    r.add_argument("--yes", action="store_true", help="launch even when the study has more than max_trials trials")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="write the study's report (tables, plots) from MLflow")
    common(rep)
    rep.add_argument("--tracking-uri", help="MLflow tracking URI")
    rep.add_argument("--out", help="output folder (default reports/<study>)")
    rep.add_argument("--metric", action="append", help="metric whose values are compared with the baseline, "
                                                       "e.g. swd (repeatable; default: all)")
    rep.add_argument("--nfe", type=int, action="append", help="NFE compared with the baseline (repeatable; default: all)")
    rep.set_defaults(func=_cmd_report)

    u = sub.add_parser("ui", help="open the MLflow UI on the study's tracking store, at the study's runs")
    u.add_argument("study", nargs="?", help="study YAML (its tracking.uri, experiment and runs)")
    u.add_argument("--tracking-uri", help="MLflow tracking URI")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--smoke", action="store_true", help="the study's --smoke runs (experiment <name>_smoke)")
    u.add_argument("--no-browser", action="store_true",
                   help="only print the URL (a browser is never opened in CI or without a display)")
    u.add_argument("--workers", type=int, help="server worker processes (default: MLflow's, 4)")
    u.set_defaults(func=_cmd_ui)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfsweep", description="MeanFlow ablation studies on Ray Tune and MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one training run, no Ray (checkpoints, samples, metrics.json)")
    t.add_argument("config", help="trial config YAML (e.g. studies/configs/checkerboard.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=500")
    t.add_argument("--out", help="output folder (default runs/<name>); rerun to resume")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    add_study_commands(sub)
    e = sub.add_parser("encode", help="encode a folder of class sub-folders of images into latent shards with a VAE")
    e.add_argument("image_dir", help="folder of class sub-folders of images (ImageNet layout)")
    e.add_argument("out", help="output folder for the shards (must not exist or be empty)")
    e.add_argument("--vae", required=True, help="diffusers AutoencoderKL: a local folder or a hub name, "
                                                "e.g. stabilityai/sd-vae-ft-ema")
    e.add_argument("--resolution", type=int, default=256, help="images are resized and center-cropped to this")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--posterior", default="sample", choices=["sample", "mean"],
                   help="encode a seeded sample of the VAE posterior (DiT's recipe) or its mean")
    e.add_argument("--seed", type=int, default=0, help="posterior noise and the row order (the held-out split)")
    e.add_argument("--copy-vae", action="store_true", help="copy a local VAE folder into OUT/vae")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_encode)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mfsweep.config import ConfigError
    from mfsweep.data import DataError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if isinstance(exc, _known_errors(ConfigError, DataError)):  # bad input: one line (per problem), exit 2
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        # a bug, not bad input: the trace into a file, one line here, exit 1
        log = _save_traceback(argv)
        where = f"traceback in {log}" if log else "traceback above"
        print(f"internal error (exit 1): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; "
              f"{where}; please report it with that trace", file=sys.stderr)
        return EXIT_INTERNAL


def _known_errors(*base: type) -> tuple[type, ...]:
    """Errors that mean bad input or a missing prerequisite (exit 2, one line): the config's and the
    data's, a study not in the tracking store, missing Inception weights. Classes are taken only from
    modules already imported (an error from a module that was never imported cannot have happened)."""
    known = list(base)
    for module, name in (("analysis.load", "StudyNotFound"), ("mfsweep.evaluation.metrics.fid", "MissingWeightsError")):
        if (mod := sys.modules.get(module)) is not None and isinstance(cls := getattr(mod, name, None), type):
            known.append(cls)
    return tuple(known)


def _save_traceback(argv: list[str] | None) -> str | None:
    """Write the current exception's traceback to ``$MFSWEEP_ERROR_DIR`` (default: the temp folder)
    as mfsweep-error-<UTC time>-<pid>.log; returns its path (None, and the trace on stderr, if that fails)."""
    import tempfile
    import time

    text = f"mfsweep {' '.join(sys.argv[1:] if argv is None else argv)}\n\n{traceback.format_exc()}"
    try:
        folder = Path(os.environ.get("MFSWEEP_ERROR_DIR") or tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mfsweep-error-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}.log"
        path.write_text(text)
        return str(path)
    except OSError:
        print(text, file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
