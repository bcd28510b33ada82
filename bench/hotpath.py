"""Gateway hot-path cost: CPU time our server spends per request, and where it goes.

Wall-clock throughput on a shared 2-core machine swings with everyone else's load; the CPU time
the gateway process burns per request does not (much), and it is what bounds throughput. This
runs the trivial emulated backend as a subprocess, our API (balancer + ``openai`` node) in this
process, and the load generator as another subprocess, then prints the server's CPU
microseconds per request (``time.process_time``), optionally with a cProfile of the hot path.

    python bench/hotpath.py --requests 4000 --concurrency 32          # unary
    python bench/hotpath.py --stream --requests 1000 --profile 25     # streamed, top-25 profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blueprint.balancer import Balancer, BalancerSettings  # noqa: E402
from blueprint.llm.config import NodeConfig  # noqa: E402
from blueprint.llm.registry import create_client  # noqa: E402
from blueprint.server import ServerSettings  # noqa: E402
from blueprint.server.runner import run_with_uvloop, start_server  # noqa: E402

MODEL = "hot"

LOADGEN = textwrap.dedent("""
    import asyncio, json, sys, time, aiohttp
    url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stream, chunks = sys.argv[4] == "1", int(sys.argv[5])
    body = json.dumps({"model": "hot", "messages": [{"role": "user", "content": "hi there"}],
                       "max_tokens": chunks, "stream": stream}).encode()
    async def main():
        left = [n]; errors = [0]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def worker():
                while left[0] > 0:
                    left[0] -= 1
                    async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        if r.status != 200:
                            errors[0] += 1
            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            print(json.dumps({"seconds": time.perf_counter() - t, "errors": errors[0]}))
    asyncio.run(main())
""")


def start_backend() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0",
                             "--model", MODEL, "--trivial"], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    for _ in range(50):
        line = proc.stdout.readline()
        if line.startswith(b"READY "):
            return proc, int(line.split()[1])
    proc.kill()
    raise RuntimeError("backend did not start")


async def load(url: str, n: int, conc: int, stream: bool, chunks: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOADGEN, url, str(n), str(conc), "1" if stream else "0", str(chunks),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return out.decode().strip()


async def run(args: argparse.Namespace) -> None:
    backend, port = start_backend()
    try:
        node = NodeConfig(name=MODEL, engine="openai", model=MODEL, base_url=f"http://127.0.0.1:{port}/v1",
                          max_batch_size=512, max_queue=1024)
        balancer = Balancer([create_client(node)], BalancerSettings(), node_configs={MODEL: node})
        await balancer.start()
        server = await start_server(balancer, ServerSettings(port=0))
        url = f"{server.url}/v1/chat/completions"
        try:
            await load(url, 300, 8, args.stream, args.chunks)  # warm-up
            # CPU time, not wall time: on a loaded box a sampled send() is mostly the scheduler
            profiler = cProfile.Profile(time.process_time) if args.profile else None
            cpu0 = time.process_time()
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            if profiler:
                profiler.enable()
            result = await load(url, args.requests, args.concurrency, args.stream, args.chunks)
            if profiler:
                profiler.disable()
            cpu = time.process_time() - cpu0
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            user = (usage1.ru_utime - usage0.ru_utime) / args.requests * 1e6
            system = (usage1.ru_stime - usage0.ru_stime) / args.requests * 1e6
            print(f"loadgen: {result}")
            print(f"server CPU per request: {cpu / args.requests * 1e6:.0f} us "
                  f"(user {user:.0f} us, system {system:.0f} us) "
                  f"({'stream' if args.stream else 'unary'}, c={args.concurrency}, n={args.requests}, "
                  f"profiled={bool(profiler)})")
            if profiler:
                text = io.StringIO()
                restrictions = [args.filter] if args.filter else []
                stats = pstats.Stats(profiler, stream=text).sort_stats(args.sort)
                stats.print_stats(*restrictions, args.profile)
                print(text.getvalue())
        finally:
            await server.close()
            await balancer.close()
    finally:
        backend.terminate()
        backend.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--profile", type=int, default=0, help="Print the top N functions (cProfile).")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--filter", default="", help="Regex on file:function of the rows printed.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_with_uvloop(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
