#!/usr/bin/env bash
# Lint, format and type check (fast; .ci/run runs it before the test matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${GLIMPSE_CI_NO_INSTALL:-0}" != 1 ]; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "ruff>=0.6"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "mypy>=1.8"
fi
"$PYTHON" -m ruff check glimpse tests benchmarks
"$PYTHON" -m ruff format --check glimpse tests benchmarks
"$PYTHON" -m mypy  # what it checks, and how strictly: [tool.mypy] in pyproject.toml
