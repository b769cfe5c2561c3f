#!/usr/bin/env bash
# GPU check of the runtime on a machine with one CUDA GPU: trains the pipeline with every stage
# process on the GPU (gloo), measures the receipts' throughput cost there, and checks that
# re-executing a unit on the GPU is bitwise reproducible (see benchmarks/gpu_check.py).
#
# Usage: benchmarks/gpu_check.sh [RESULT.json] [gpu_check.py options...]
#   RESULT.json defaults to $OUT/gpu_check.json when OUT is set, else ./gpu_check.json.
#   PYTHON selects the interpreter (default: python3); it needs stagewarden and a CUDA build of torch.
# Exit codes: 0 every check passed, 1 a check failed or the time limit was reached, 2 no CUDA.
# The check stops starting rounds after 480 s and is stopped at 570 s, within 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
result="${1:-${OUT:-.}/gpu_check.json}"
shift || true
python="${PYTHON:-python3}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: CUDA is not available to $python (torch.cuda.is_available() is False); nothing was run" >&2
    exit 2
fi
status=0
timeout --signal=TERM --kill-after=20 570 "$python" benchmarks/gpu_check.py --device cuda --json "$result" "$@" \
    || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check: stopped after 570 s" >&2
    exit 1
fi
exit "$status"
