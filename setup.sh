#!/usr/bin/env bash
# Create .venv and install unlearnflow with everything it needs (idempotent).
# One pip command with a constraints file: installing pieces separately can make
# pip re-resolve prefect to a release that does not work here.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/pip-install.log
echo "setup: installing into .venv (about 2 minutes the first time; log: $log)"
if ! { .venv/bin/python -m pip install --upgrade pip &&
       .venv/bin/python -m pip install -c constraints.txt -e '.[dev]'; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "setup: pip install failed; full log in $log" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))"
