#!/usr/bin/env bash
# The main job: set up .venv, train a diffusion model on the 8x8 digits for 800 steps, tune its sampling plan,
# sample it, evaluate it and write runs/main/report.html (+ PNG figures): about 10 minutes on 2 CPU cores.
# Usage: bash scripts/main.sh [options of `diffusionlens main`, e.g. --steps 300, --minutes 2, --device cuda]
#        SKIP_SETUP=1 bash scripts/main.sh ...   # reuse an existing .venv without reinstalling
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-0}" != "1" ] || [ ! -x .venv/bin/diffusionlens ]; then
  bash scripts/setup.sh
fi
exec .venv/bin/diffusionlens main "$@"
