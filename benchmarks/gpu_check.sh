#!/usr/bin/env bash
# One GPU check (< 8 minutes on one H100): paper-scale step ratios, sampling and FID-feature throughput
# as JSON. Usage on the device machine, from the repository root, after `pip install -e .`:
#   bash benchmarks/gpu_check.sh > benchmarks/results/gpu_check.json
# `bash benchmarks/gpu_check.sh --tiny` is the same script on tiny backbones (a CPU dry run).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
timeout 470 "$PY" gpu_check.py "$@"
