#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the package (CPU torch) and the pinned npm tools
# (anvil, solcjs). Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first and exactly pinned: the CPU build; a looser pin pulls gigabytes of CUDA packages.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[hf,dev]"
if [ ! -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || [ ! -d node_modules/solc ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
