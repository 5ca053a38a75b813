#!/usr/bin/env bash
# Create .venv at the repository root and install diffusionlens into it.
# Usage: bash scripts/setup.sh [--test] [--peers]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
extras=""
for a in "$@"; do
  case "$a" in
    --test) extras="${extras:+$extras,}test" ;;
    --peers) extras="${extras:+$extras,}peers" ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
say() { echo "setup: $*" >&2; }
# k-diffusion is installed without its dependencies (below), so pip's after-install check would list
# them as conflicts on every later install; they are known and harmless here, hence --no-warn-conflicts.
pip_install() { .venv/bin/python -m pip install -q --no-warn-conflicts "$@"; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
say "upgrading pip"
pip_install --upgrade pip
# torch first, pinned, so that nothing later pulls a second (CUDA, multi-GB) build.
say "installing torch==2.13.0 (skipped if present; the first install downloads about 200 MB)"
pip_install "torch==2.13.0"
say "installing diffusionlens (editable) with numpy, scipy, safetensors, matplotlib, tqdm, scikit-learn, mlxtend${extras:+ and the extras: $extras}"
pip_install -e ".${extras:+[$extras]}"
if [[ " $* " == *" --peers "* ]]; then
  # k-diffusion's package __init__ imports torchvision, which breaks beside this torch: no deps,
  # and the benchmarks import k_diffusion.sampling on its own.
  # torchcfm's requirements pull torchdyn (and through it more): no deps either; its
  # conditional_flow_matching module needs only POT (in the peers extra), which is all the benchmark imports.
  say "installing the peers used by tests and benchmarks: torchdiffeq, torchsde, k-diffusion and torchcfm (without their dependencies)"
  pip_install torchdiffeq torchsde scipy
  pip_install --no-deps "k-diffusion==0.1.1.post1" || pip_install --no-deps k-diffusion
  pip_install --no-deps "torchcfm==1.0.7" || pip_install --no-deps torchcfm
fi
if [[ " $* " == *" --test "* ]]; then
  # the browser test of the report (tests/test_browser.py) needs a headless Chromium: the Debian package
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "${CHROMIUM:-}" ]; then
    say "chromium found: the report's browser test will run"
  elif command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    say "installing chromium and chromium-driver with apt-get (about 100 MB) for the report's browser test"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
             --no-install-recommends chromium chromium-driver; } >/dev/null; then
      say "apt-get could not install chromium: the report's browser test will be skipped"
    fi
  else
    say "not installing chromium (needs apt-get and root or password-less sudo): the report's browser test will be skipped"
  fi
fi
say "done: .venv is ready"
