#!/usr/bin/env bash
# System packages and engines the test suite exercises for real. Idempotent; safe to re-run.
set -euo pipefail
PY="${1:-.venv/bin/python}"
"$PY" -c "import llem" >/dev/null
