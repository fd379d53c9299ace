#!/usr/bin/env bash
# Create .venv/ at the repository root and install scripts/requirements.txt into it.
# Idempotent: an existing venv is reused and pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
.venv/bin/ansible-runner --version
