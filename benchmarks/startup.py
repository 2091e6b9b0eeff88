"""Start-up time of the command line: `mfsweep --help` and `mfsweep validate STUDY`.

Runs each command N times in fresh processes (`python -m mfsweep.cli ...`) and prints the median
wall time. With `--against REV` it also times the tree of git revision REV (exported to a
temporary folder and put first on PYTHONPATH), interleaved with the current tree, and prints
the ratios, so that both numbers come from the same process and the same machine load.

    python benchmarks/startup.py --repeat 7 --against ba35237
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"--help": ["--help"], "validate": ["validate", str(ROOT / "studies" / "rt_sampling.yaml")]}


def _run(src: Path, argv: list[str], cwd: str) -> subprocess.CompletedProcess:
    # cwd is a neutral folder: `python -m` puts it first on sys.path, ahead of PYTHONPATH's tree
    return subprocess.run([sys.executable, *argv], cwd=cwd, env={**os.environ, "PYTHONPATH": str(src)},
                          capture_output=True, text=True)


def _check_source(src: Path, cwd: str) -> None:
    out = _run(src, ["-c", "import mfsweep; print(mfsweep.__file__)"], cwd)
    if not out.stdout.strip().startswith(str(src)):
        raise SystemExit(f"expected mfsweep from {src}, got {out.stdout.strip() or out.stderr}")


def _time(src: Path, args: list[str], cwd: str) -> float:
    t0 = time.perf_counter()
    out = _run(src, ["-m", "mfsweep.cli", *args], cwd)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{src}: mfsweep {' '.join(args)} failed:\n{out.stderr}")
    return elapsed


def _export(rev: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev, "mfsweep", "analysis"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--against", help="git revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    trees = {"current": ROOT}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cwd:
        if args.against:
            trees[args.against] = _export(args.against, Path(tmp))
        for src in trees.values():
            _check_source(src, cwd)
        times: dict[str, dict[str, list[float]]] = {t: {c: [] for c in COMMANDS} for t in trees}
        for _ in range(args.repeat):  # interleaved: both trees see the same load
            for name, src in trees.items():
                for cmd, cmd_args in COMMANDS.items():
                    times[name][cmd].append(_time(src, cmd_args, cwd))
    result = {name: {cmd: statistics.median(v) for cmd, v in per.items()} for name, per in times.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"median of {args.repeat} runs, seconds (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f})")
    for name, per in result.items():
        print(f"  {name:>10s}: " + "   ".join(f"mfsweep {cmd} {v:.2f} s" for cmd, v in per.items()))
    if args.against:
        for cmd in COMMANDS:
            print(f"  ratio {cmd}: {result[args.against][cmd] / result['current'][cmd]:.1f}x faster")


if __name__ == "__main__":
    main()
