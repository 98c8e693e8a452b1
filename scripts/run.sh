#!/usr/bin/env bash
# Set up (once) and run mtlsolve from a checkout.
#   bash scripts/run.sh bench [args...]   # the main job: mtlsolve bench on the built-in problems
#   bash scripts/run.sh test [args...]    # the test suite
# The first run creates .venv, installs torch==2.13.0 (CPU build) first, then mtlsolve with
# its test/bench/Lightning extras and the example third-party plugin, all in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MTLSOLVE_VENV:-.venv}
STAMP="$VENV/.mtlsolve-installed"
PY=${PYTHON:-python3}

needs_install() {
  [ ! -x "$VENV/bin/python" ] && return 0
  [ ! -f "$STAMP" ] && return 0
  [ pyproject.toml -nt "$STAMP" ] || [ scripts/constraints.txt -nt "$STAMP" ] \
    || [ examples/mtlsolve-example-plugin/pyproject.toml -nt "$STAMP" ]
}

if needs_install; then
  echo "setting up $VENV ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"  # an existing venv (e.g. --system-site-packages) is kept
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[dev]" -e examples/mtlsolve-example-plugin
  touch "$STAMP"
fi

cmd=${1:-test}
shift || true
case "$cmd" in
  bench) exec "$VENV/bin/mtlsolve" bench "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh bench|test [args...]" >&2; exit 2 ;;
esac
