#!/usr/bin/env bash
# Set up .venv (with the test extras and the peer libraries the conformance tests use) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test --peers
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
