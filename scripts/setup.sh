#!/usr/bin/env bash
# Create .venv at the repository root and install diffusionlens into it.
# Usage: bash scripts/setup.sh [--test] [--peers]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so that nothing later pulls a second (CUDA, multi-GB) build.
.venv/bin/python -m pip install -q "torch==2.13.0"
extras=""
for a in "$@"; do
  case "$a" in
    --test) extras="${extras:+$extras,}test" ;;
    --peers) extras="${extras:+$extras,}peers" ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
if [[ " $* " == *" --peers "* ]]; then
  # k-diffusion's package __init__ imports torchvision, which breaks beside this torch: no deps,
  # and the benchmarks import k_diffusion.sampling on its own.
  .venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1.post1" || .venv/bin/python -m pip install -q --no-deps k-diffusion
  .venv/bin/python -m pip install -q torchdiffeq torchsde scipy
fi
