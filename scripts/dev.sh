#!/usr/bin/env bash
# Quick start: install, then bring up anvil + TNT Core, a fresh service, a tiny local model and the
# daemon, and answer one job of each kind. Extra arguments go to `python -m blueprint dev`
# (e.g. --smoke to exit after the round trip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m blueprint dev "$@"
