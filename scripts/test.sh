#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (GPU-only tests skip without CUDA;
# Triton kernels run under TRITON_INTERPRET=1 on small shapes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/python -m pytest "$@"
