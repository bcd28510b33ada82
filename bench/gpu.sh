#!/usr/bin/env bash
# The GPU check, one script for a lent CUDA machine that has PyTorch and transformers but no
# package registry: our other dependencies travel as wheels in .whl/ (README, "Benchmarks"),
# fetched beforehand where pip reaches PyPI:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl -r bench/gpu-wheels.txt
#
#   bash bench/gpu.sh [OUT_DIR]     # engine and server tests on CUDA, bench/gpu.py, bench/engine.py
#
# Writes nvidia-smi's view, the test log and the benchmark's figures to OUT_DIR (default
# bench/out/gpu). Each stage is bounded in time and the next one runs even if it failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/out/gpu}}
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/blueprint-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/blueprint-site PATH="/tmp/blueprint-site/bin:$PATH"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

echo "== engine and server tests on CUDA =="
tests=${GPU_TESTS:-"tests/llm/test_transformers_engine.py tests/llm/test_transformers_logprobs.py
  tests/llm/test_structured_outputs.py tests/server/test_openai_clients.py
  tests/server/test_structured_conformance.py"}
# shellcheck disable=SC2086  # a list of paths
BLUEPRINT_TEST_DEVICE=cuda timeout "${GPU_TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider $tests 2>&1 | tee "$out/tests.txt" | tail -40

echo "== bench/gpu.py =="
timeout "${GPU_BENCH_TIMEOUT:-300}" python3 bench/gpu.py --json "$out/gpu.json" --profile "$out/serve-profile" ${GPU_BENCH_ARGS:-} 2>&1 \
  | grep -v -E "Loading weights|Writing model shards" | tee "$out/bench.txt"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$out/gpu.txt"

echo "== bench/engine.py on CUDA (continuous batching and constrained decoding, 512x8 model) =="
spy=()  # the engine's threads sampled (collapsed stacks), where py-spy travelled with the wheels
command -v py-spy >/dev/null && spy=(py-spy record --nonblocking --threads --rate 100 --format raw
                                     --output "$out/engine-profile.txt" --)
# shellcheck disable=SC2086  # extra flags
timeout "${GPU_ENGINE_TIMEOUT:-150}" "${spy[@]}" python3 bench/engine.py --device cuda --models large \
  --threads 0 --repeats 1 --concurrency 1 16 ${GPU_ENGINE_ARGS:-} 2>&1 | grep -v -E "Loading weights|Writing model shards" | tee "$out/engine.txt"
