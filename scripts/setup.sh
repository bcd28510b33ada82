#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the package and the pinned npm tools (anvil,
# solcjs). Safe to run again; it only installs what is missing, and leaves the checkout clean
# (`npm ci` installs exactly package-lock.json and never rewrites it).
#
#   bash scripts/setup.sh           torch for CPU (as the package index serves it; set
#                                   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where
#                                   the index is PyPI itself, whose Linux torch is the CUDA build)
#   bash scripts/setup.sh --cuda    torch built for CUDA (TORCH_CUDA=cu128 picks the build), for
#                                   `device = "cuda"` nodes of the transformers engine
#   bash scripts/setup.sh --vllm    the vllm extra too (a CUDA GPU; vLLM brings its own torch)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=0
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --vllm) CUDA=1; VLLM=1 ;;
    *) echo "usage: scripts/setup.sh [--cuda] [--vllm]" >&2; exit 2 ;;
  esac
done
TORCH_VERSION=2.13.0
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if [ "$VLLM" = 1 ]; then
  python -m pip install -q -e ".[dev,vllm]" "transformers>=4.50"
elif [ "$CUDA" = 1 ]; then
  TORCH_CUDA=${TORCH_CUDA:-cu128}
  python -m pip install -q "torch==${TORCH_VERSION}+${TORCH_CUDA}" \
    --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${TORCH_CUDA}}" \
    --extra-index-url https://pypi.org/simple
  python -m pip install -q -e ".[hf,dev]"
else
  # torch first and exactly pinned, so the CPU build the index serves is taken.
  python -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
  python -m pip install -q -e ".[hf,dev]"
fi
if [ "$CUDA" = 1 ]; then
  python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else "torch has no CUDA: check TORCH_CUDA / TORCH_INDEX_URL")'
fi
if [ ! -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] && [ ! -x node_modules/@foundry-rs/anvil-darwin-arm64/bin/anvil ] \
   || [ ! -d node_modules/solc ]; then
  npm ci --no-audit --no-fund --loglevel=error
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
