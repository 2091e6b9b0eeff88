"""Command line: ``mfsweep train | validate | run | report | ui``.

Exit codes: 0 success; 2 invalid input (nothing is written); 3 a study finished but some trials
failed or diverged (``run``), or a training run diverged (``train``); 1 internal error; 130
interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _cmd_train(args) -> int:
    from mfsweep.config import load_config_file
    from mfsweep.train import train

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfsweep", description="MeanFlow ablation studies on Ray Tune and MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one training run, no Ray (checkpoints, samples, metrics.json)")
    t.add_argument("config", help="trial config YAML (e.g. studies/configs/checkerboard.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=500")
    t.add_argument("--out", help="output folder (default runs/<name>); rerun to resume")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    from mfsweep import study_cli  # validate, run, report, ui

    study_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from mfsweep.config import ConfigError
    from mfsweep.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
