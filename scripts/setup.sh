#!/usr/bin/env bash
# Create .venv at the repository root and install diffusionlens into it.
# Usage: bash scripts/setup.sh [--test] [--peers]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
say() { echo "setup: $*"; }
[ -x .venv/bin/python ] || { say "creating .venv with $PY"; "$PY" -m venv .venv; }
say "upgrading pip"
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so that nothing later pulls a second (CUDA, multi-GB) build.
say "installing torch 2.13.0 (CPU build; about a minute on a fresh machine)"
.venv/bin/python -m pip install -q "torch==2.13.0"
extras=""
for a in "$@"; do
  case "$a" in
    --test) extras="${extras:+$extras,}test" ;;
    --peers) extras="${extras:+$extras,}peers" ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
say "installing diffusionlens (editable)${extras:+ with extras: $extras}"
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
if [[ " $* " == *" --peers "* ]]; then
  say "installing the peer libraries of the conformance tests: k-diffusion, torchdiffeq, torchsde, scipy"
  # k-diffusion's package __init__ imports torchvision, which breaks beside this torch: no deps,
  # and the benchmarks import k_diffusion.sampling on its own. pip then reports k-diffusion's missing
  # dependencies in an "ERROR:" block that is expected: it is shown only if an install fails.
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! { .venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1.post1" 2>"$log" \
         || .venv/bin/python -m pip install -q --no-deps k-diffusion 2>"$log"; } \
     || ! .venv/bin/python -m pip install -q torchdiffeq torchsde scipy 2>>"$log"; then
    cat "$log" >&2
    exit 1
  fi
  say "done (k-diffusion is installed without its dependencies on purpose: only k_diffusion.sampling is used)"
fi
say "ready: .venv/bin/diffusionlens"
