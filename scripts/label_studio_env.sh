#!/usr/bin/env bash
# Creates (once) the separate virtualenv with Label Studio that tests/test_label_studio_live.py runs, plus a
# migrated, user-less template database so a test server starts in seconds instead of migrating for ~30 s.
#
#   scripts/label_studio_env.sh            create it when missing or broken (a working one returns at once)
#   scripts/label_studio_env.sh --path     print where it is (or would be) and exit
#
# Where: $GILL_LABEL_STUDIO_VENV, else ${XDG_CACHE_HOME:-~/.cache}/gill/label-studio-<version>. It is outside the
# project's .venv on purpose: Label Studio pins its own Django, pydantic, ... versions, which must not touch gill's.
# Interpreter: $PYTHON (default python3; Label Studio 1.23 needs Python >= 3.10).
set -euo pipefail

LS_VERSION="1.23.2"
VENV="${GILL_LABEL_STUDIO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gill/label-studio-$LS_VERSION}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.gill-ready"
TEMPLATE="$VENV/gill-template-data"

if [ "${1:-}" = "--path" ]; then
  echo "$VENV"
  exit 0
fi

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "label-studio==$LS_VERSION" ] \
    && [ -x "$VENV/bin/label-studio" ] && [ -f "$TEMPLATE/label_studio.sqlite3" ] \
    && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" \
       2>/dev/null
}

if ready; then
  echo "Label Studio $LS_VERSION: ready in $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
# One builder at a time (two `make test` in parallel would otherwise both build into the same folder).
exec 9>"$VENV.lock"
if command -v flock >/dev/null; then flock 9; fi
if ready; then
  echo "Label Studio $LS_VERSION: ready in $VENV"
  exit 0
fi

start=$(date +%s)
echo "Label Studio $LS_VERSION: creating its virtualenv in $VENV (about a minute)"
rm -rf "$VENV"   # a venv cannot be moved after creation, so it is built in place; the stamp is written last
"$PY" -m venv "$VENV"
LOG="$VENV/gill-install.log"
if ! { "$VENV/bin/python" -m pip install --upgrade "pip>=24" \
       && "$VENV/bin/python" -m pip install --no-compile "label-studio==$LS_VERSION"; } >"$LOG" 2>&1; then
  tail -n 40 "$LOG" >&2
  echo "error: installing label-studio==$LS_VERSION failed (full log: $LOG)" >&2
  exit 1
fi

# The template: Label Studio's database with every migration applied and no user, made by its own CLI
# (`init -q` without --username only migrates). Tests copy it into a fresh data dir. No network: the version
# check against the package index and the analytics are off.
TMP_TEMPLATE="$VENV/gill-template-data.tmp"
rm -rf "$TMP_TEMPLATE" "$TEMPLATE"
mkdir -p "$TMP_TEMPLATE"
if ! env LABEL_STUDIO_BASE_DATA_DIR="$TMP_TEMPLATE" LABEL_STUDIO_LATEST_VERSION_CHECK=false \
       LABEL_STUDIO_COLLECT_ANALYTICS=false "$VENV/bin/label-studio" init -q >>"$LOG" 2>&1; then
  tail -n 40 "$LOG" >&2
  echo "error: label-studio init (database migrations) failed (full log: $LOG)" >&2
  exit 1
fi
rm -f "$TMP_TEMPLATE/.env"   # its generated SECRET_KEY: every server started from the template makes its own
mv "$TMP_TEMPLATE" "$TEMPLATE"
echo "label-studio==$LS_VERSION" >"$STAMP"
echo "Label Studio $LS_VERSION: ready in $VENV ($(($(date +%s) - start)) s)"
