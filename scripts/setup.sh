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
# Debian's Chromium for the console's browser tests (driven headless over the DevTools protocol;
# nothing is downloaded at test time). Skipped when a browser is there already, and never fatal:
# a machine without apt (or without root) runs everything else, and those tests skip.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the console's browser tests will skip" >&2
  else
    echo "setup: no chromium and no apt-get as root; the console's browser tests will skip" >&2
  fi
fi
