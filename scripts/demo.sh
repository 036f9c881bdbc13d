#!/usr/bin/env bash
# Quickstart demo: set up .venv, build the embedded demo model on first use (with progress),
# then generate text with the reference engine. Extra arguments go to `fieldprint generate`,
# e.g.  bash scripts/demo.sh --temperature 0.8 --seed 7 --json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fieldprint generate --prompt "Once upon a time," --max-new-tokens 32 "$@"
