"""Instructions per request of ``python -m blueprint serve``, counted by valgrind's callgrind: the
one per-request cost figure that does not move with the machine's load.

CPU time per request (``bench/gateway.py``, ``bench/hotpath.py``) swings by 20-30 % on a shared
2-core box as the other processes come and go; the user-space instructions the gateway executes
per request do not (two runs of the same tree agree within about 1 %). Use it to decide whether
a change to the hot path pays, then confirm with ``bench/gateway.py``.

It starts the trivial emulated backend and ``serve`` (one ``openai`` node, an API key, round
robin) under ``valgrind --tool=callgrind``, warms up, zeroes the counters, sends ``--requests``
requests at concurrency 32 from a separate load generator, and divides the instructions counted by
the requests. Under valgrind the server runs ~50x slower, so a run of 1,000 requests takes about
a minute. ``--tree`` measures another checkout (e.g. ``git archive <rev> | tar -x -C /tmp/old``).

    python bench/instructions.py                       # this tree, non-streamed
    python bench/instructions.py --tree /tmp/old       # an older revision, for a before/after
    python bench/instructions.py --stream --requests 300

Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-master-key"
MODEL = "bench-trivial"

LOADGEN = """
import asyncio, json, sys, time, aiohttp
url, n, conc, stream, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
messages = [{"role": "user", "content": "Say something short."}]
body = json.dumps({"model": "bench-trivial", "messages": messages, "max_tokens": 16,
                   "stream": stream}).encode()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
async def main():
    left, errors = [n], [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker():
            while left[0] > 0:
                left[0] -= 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    errors[0] += response.status != 200
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        print(json.dumps({"seconds": round(time.perf_counter() - began, 2), "errors": errors[0]}))
asyncio.run(main())
"""


def _ready_port(proc: subprocess.Popen[bytes], what: str) -> int:
    assert proc.stdout is not None
    for _ in range(500):
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(b"READY "):
            return int(line.split()[1])
    raise RuntimeError(f"{what} did not start")


def _dumped_instructions(workdir: Path) -> int:
    """The instruction count of the dump ``callgrind_control -d`` wrote (after the zeroing)."""
    total = 0
    for path in workdir.glob("callgrind.out*"):
        text = path.read_text(errors="replace")
        if "desc: Trigger: dump" not in text:
            continue
        for line in text.splitlines():
            if line.startswith("summary:"):
                total += int(line.split()[1])
    return total


def measure(tree: Path, requests: int, stream: bool) -> float:
    """Thousands of instructions per request of ``serve`` from ``tree``."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("API_KEYS", None)
    backend = subprocess.Popen([sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0",
                                "--model", MODEL, "--trivial"], stdout=subprocess.PIPE, cwd=tree, env=env)
    server = None
    try:
        backend_port = _ready_port(backend, "the emulated backend")
        config = workdir / "serve.toml"
        config.write_text(f'[server]\napi_keys = ["{KEY}"]\n\n[balancer]\nstrategy = "round_robin"\n\n'
                          f'[[nodes]]\nname = "{MODEL}"\nengine = "openai"\nmodel = "{MODEL}"\n'
                          f'base_url = "http://127.0.0.1:{backend_port}/v1"\nmax_batch_size = 512\n'
                          'max_queue = 1024\n')
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.out",
             sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0"],
            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{_ready_port(server, 'serve under valgrind')}/v1/chat/completions"

        def load(count: int) -> dict[str, float]:
            argv = [sys.executable, "-c", LOADGEN, url, str(count), "32", "1" if stream else "0", KEY]
            done = subprocess.run(argv, capture_output=True, timeout=1800, check=True)
            return dict(json.loads(done.stdout))

        load(300)  # warm-up: connections, caches, lazy imports
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
        result = load(requests)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)
        if result["errors"]:
            raise RuntimeError(f"{result['errors']} of {requests} requests failed")
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
        backend.terminate()
        backend.wait(10)
    instructions = _dumped_instructions(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    return instructions / requests / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="Checkout whose blueprint is measured.")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--stream", action="store_true", help="Streamed requests (16 chunks, no pacing).")
    args = parser.parse_args()
    per_request = measure(args.tree.resolve(), args.requests, args.stream)
    print(f"{per_request:.1f} k instructions per {'streamed' if args.stream else 'non-streamed'} request "
          f"(serve from {args.tree}, n={args.requests}, c=32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
