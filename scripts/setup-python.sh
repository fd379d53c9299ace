#!/usr/bin/env bash
# Create .venv/ at the repository root, install scripts/requirements.txt into it, then
# Warren's Python package (python/: the embedded client node and the ansible_runner
# drop-in). Idempotent: an existing venv is reused, pip skips what is already installed,
# and cargo rebuilds the extension only when its sources changed.
#
# The extension is built by maturin with cargo, into the workspace's target dir (or
# $CARGO_TARGET_DIR), in cargo's dev profile: the tests and the demo need no optimised
# build. WARREN_PYTHON_PROFILE=release builds it as `pip install ./python` does.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
.venv/bin/ansible-runner --version
# maturin is the venv's (pinned above): no build isolation, so nothing is fetched to build.
PATH="$PWD/.venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile ${WARREN_PYTHON_PROFILE:-dev} --strip" \
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps ./python
