#!/usr/bin/env bash
# Creates (once) a separate virtualenv with a DuckDB 1.x client, which tests/test_db_compat.py runs to check that
# the gill.duckdb gill writes (with DuckDB 2, in the 1.1 storage format) opens in DuckDB 1.x.
#
#   scripts/duckdb1_env.sh            create it when missing or broken (a working one returns at once)
#   scripts/duckdb1_env.sh --python   print its interpreter (or the one $GILL_DUCKDB1_PYTHON names) and exit
#
# Where: ${XDG_CACHE_HOME:-~/.cache}/gill/duckdb-<version>. $GILL_DUCKDB1_PYTHON names another interpreter that
# has a DuckDB 1.x (then nothing is created, only checked). Interpreter for the virtualenv: $PYTHON (default
# python3). DuckDB 1.1.3 is the last release of the oldest line that reads gill's file (see flows/store.py).
set -euo pipefail

DUCKDB_VERSION="1.1.3"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/gill/duckdb-$DUCKDB_VERSION"
PY="${PYTHON:-python3}"
STAMP="$VENV/.gill-ready"
TARGET="${GILL_DUCKDB1_PYTHON:-$VENV/bin/python}"

if [ "${1:-}" = "--python" ]; then
  echo "$TARGET"
  exit 0
fi

if [ -n "${GILL_DUCKDB1_PYTHON:-}" ]; then
  if version=$("$GILL_DUCKDB1_PYTHON" -c "import duckdb; print(duckdb.__version__)" 2>/dev/null) \
     && [ "${version%%.*}" = "1" ]; then
    echo "DuckDB $version: ready in $GILL_DUCKDB1_PYTHON (GILL_DUCKDB1_PYTHON)"
    exit 0
  fi
  echo "error: GILL_DUCKDB1_PYTHON=$GILL_DUCKDB1_PYTHON does not import a DuckDB 1.x (got: ${version:-none})" >&2
  exit 1
fi

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "duckdb==$DUCKDB_VERSION" ] \
    && "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null
}

if ready; then
  echo "DuckDB $DUCKDB_VERSION: ready in $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
# One builder at a time (two `make test` in parallel would otherwise both build into the same folder).
exec 9>"$VENV.lock"
if command -v flock >/dev/null; then flock 9; fi
if ready; then
  echo "DuckDB $DUCKDB_VERSION: ready in $VENV"
  exit 0
fi

start=$(date +%s)
echo "DuckDB $DUCKDB_VERSION: creating its virtualenv in $VENV (a few seconds)"
rm -rf "$VENV"   # a venv cannot be moved after creation, so it is built in place; the stamp is written last
"$PY" -m venv "$VENV"
LOG="$VENV/gill-install.log"
if ! "$VENV/bin/python" -m pip install --no-compile --only-binary :all: "duckdb==$DUCKDB_VERSION" >"$LOG" 2>&1; then
  tail -n 40 "$LOG" >&2
  echo "error: installing duckdb==$DUCKDB_VERSION failed (full log: $LOG)" >&2
  exit 1
fi
echo "duckdb==$DUCKDB_VERSION" >"$STAMP"
echo "DuckDB $DUCKDB_VERSION: ready in $VENV ($(($(date +%s) - start)) s)"
