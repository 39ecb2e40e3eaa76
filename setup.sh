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
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))"
