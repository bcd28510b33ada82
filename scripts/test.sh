#!/usr/bin/env bash
# The test command of the README and of CI: install, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check blueprint tests bench
python -m pytest -q "$@"
