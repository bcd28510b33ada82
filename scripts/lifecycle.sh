#!/usr/bin/env bash
# The whole life of a service on a chain, with the documented commands alone:
#   keys import -> deploy -> register -> service request -> service approve -> run -> submit.
# Usage: bash scripts/lifecycle.sh MODEL_DIR [MODEL_ID]
# Environment (defaults fit a local devnet started by `python -m blueprint dev` or anvil on 8545):
#   HTTP_RPC_URL   the chain (http://127.0.0.1:8545)
#   OWNER_KEY      0x key of the blueprint and service owner (anvil's account #0)
#   OPERATOR_KEY   0x key of the operator (anvil's account #6: holds ETH and TNT for the bond)
#   PORT           the operator's HTTP API port (8080); WORK the folder for keystore, config, logs
# Prints each command's JSON; the last line is the result of the submitted chat job.
set -euo pipefail
MODEL_DIR=${1:?usage: scripts/lifecycle.sh MODEL_DIR [MODEL_ID]}
MODEL_ID=${2:-$(basename "$MODEL_DIR")}
export HTTP_RPC_URL=${HTTP_RPC_URL:-http://127.0.0.1:8545}
export OWNER_KEY=${OWNER_KEY:-0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80}
export OPERATOR_KEY=${OPERATOR_KEY:-0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e}
PORT=${PORT:-8080}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
PY=${PYTHON:-python}
bp() { "$PY" -m blueprint "$@"; }
field() { "$PY" -c 'import json, sys; print(json.loads(sys.stdin.readlines()[-1])[sys.argv[1]])' "$1"; }
step() { echo "== $*" >&2; }

step "operator keystore"
bp keys import --keystore-uri "$WORK/keystore" --private-key-env OPERATOR_KEY | tee "$WORK/keys.json"
OPERATOR=$(field address < "$WORK/keys.json")

step "deploy the service manager and create the blueprint (owner)"
bp deploy --private-key-env OWNER_KEY | tee "$WORK/deploy.json"
BLUEPRINT_ID=$(field blueprint_id < "$WORK/deploy.json")

cat > "$WORK/operator.toml" <<TOML
[[nodes]]
engine = "transformers"
model = "$MODEL_ID"
path = "$MODEL_DIR"
device = "cpu"

[server]
port = $PORT

[jobs]
poll_interval_s = 0.5
TOML

step "bond and register the operator with its offer"
bp register --config "$WORK/operator.toml" --keystore-uri "$WORK/keystore" --blueprint-id "$BLUEPRINT_ID" \
  --public-url "http://127.0.0.1:$PORT" | tee "$WORK/register.json"

step "request a service from that operator (owner)"
bp service request --blueprint-id "$BLUEPRINT_ID" --operator "$OPERATOR" --private-key-env OWNER_KEY \
  | tee "$WORK/request.json"
REQUEST_ID=$(field request_id < "$WORK/request.json")

step "approve it (operator): the service becomes active"
bp service approve --request-id "$REQUEST_ID" --keystore-uri "$WORK/keystore" | tee "$WORK/approve.json"
SERVICE_ID=$(field service_id < "$WORK/approve.json")

step "run the operator daemon (as the blueprint manager would)"
"$PY" -m blueprint run --config "$WORK/operator.toml" --keystore-uri "$WORK/keystore" --data-dir "$WORK/data" \
  --blueprint-id "$BLUEPRINT_ID" --service-id "$SERVICE_ID" > "$WORK/daemon.out" 2> "$WORK/daemon.log" &
DAEMON=$!
trap 'kill "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  grep -q '"daemon.ready"' "$WORK/daemon.log" && break
  kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }
  sleep 0.5
done
grep -q '"daemon.ready"' "$WORK/daemon.log" || { echo "daemon not ready" >&2; tail "$WORK/daemon.log" >&2; exit 1; }

step "submit a chat job (owner) and wait for the operator's answer"
bp submit --service-id "$SERVICE_ID" --model "$MODEL_ID" --max-tokens 8 --private-key-env OWNER_KEY \
  --request '{"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "seed": 1}'
