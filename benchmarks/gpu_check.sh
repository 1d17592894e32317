#!/usr/bin/env bash
# The GPU check of the paper's run (spanlib/bench/gpu.py): one CUDA device, a few minutes; writes benchmarks/gpu.md.
# Extra arguments go to the check (--quick, --json).
set -eo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m spanlib bench gpu --out benchmarks/gpu.md "$@"
