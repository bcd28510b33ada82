#!/usr/bin/env bash
# Does a fresh clone work for a newcomer? Clones this repository (the current branch's last commit)
# into a temporary folder with no ../shared beside it, an empty cache for the devnet state and none
# of the TNT_CORE_* overrides, then runs the README's two commands there:
#
#   bash scripts/dev.sh --smoke     (set-up, then the whole local stack and one job of each kind)
#   bash scripts/test.sh            (ruff and the whole suite)
#
# and checks that the set-up left the checkout clean. Not part of the suite (it runs the suite);
# takes many minutes. KEEP=1 keeps the folder; extra arguments go to pytest.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d -t fresh-clone-XXXXXX)
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
git clone --quiet --no-hardlinks "$SRC" "$WORK/repo"
if [ -e "$WORK/shared" ]; then echo "unexpected $WORK/shared beside the clone" >&2; exit 1; fi
cd "$WORK/repo"
echo "== fresh clone of $(git log -1 --format='%h %s' | cut -c1-80) in $WORK/repo"
unset TNT_CORE_DIR TNT_CORE_STATE BLUEPRINT_CONFIG PYTHONPATH VIRTUAL_ENV
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"  # reuse downloads; not the devnet cache
export XDG_CACHE_HOME="$WORK/cache"                        # no extracted or user-placed devnet state
start=$(date +%s)
echo "== bash scripts/dev.sh --smoke"
bash scripts/dev.sh --smoke
echo "== bash scripts/test.sh $*"
bash scripts/test.sh "$@"
echo "== the checkout after set-up and tests"
if [ -n "$(git status --porcelain)" ]; then
  git status --short
  echo "the set-up or the tests left the checkout dirty" >&2
  exit 1
fi
echo "fresh clone OK: both README commands passed in $(( $(date +%s) - start ))s, checkout clean"
