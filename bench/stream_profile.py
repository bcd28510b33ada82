"""Where a streamed request's CPU goes in our gateway: a py-spy flame graph of the ``serve``
process while paced streams run through it.

The same emulated paced backend and load generator as ``bench/gateway.py`` (``--chunks`` tokens
``--interval-ms`` apart, ``--concurrency`` streams at a time); ``serve`` runs as its own process
with one ``openai`` node, and ``py-spy record`` samples it (CPU only, idle time left out) for
``--seconds``. Prints the level's figures (streams/s, time to first chunk, inter-chunk gaps) and
the gateway's CPU per stream from /proc, and writes the flame graph.

    python bench/stream_profile.py --out bench/out/stream-before.svg
    python bench/stream_profile.py --no-profile --seconds 6     # the figures alone, no sampler
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway  # bench/gateway.py: its processes, backends and load generator


async def run(args: argparse.Namespace) -> None:
    procs: list[gateway.Proc] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-profile-"))
    try:
        trivial, trivial_port = gateway.start_backend("trivial", "--model", gateway.TRIVIAL, "--trivial")
        procs.append(trivial)
        paced, paced_port = gateway.start_backend(
            "paced", "--model", gateway.PACED, "--prefill-s-per-token", "0", "--batch-penalty", "0",
            "--decode-s-per-token", str(args.interval_ms / 1000), "--max-num-seqs", "1024")
        procs.append(paced)
        ours, port = gateway.start_ours("ours", trivial_port, paced_port, workdir,
                                        gateway.POLICIES[args.policy], args.workers)
        procs.append(ours)
        base = f"http://127.0.0.1:{port}/v1"
        await gateway.wait_answering(base, gateway.PACED, 60, ours)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            await gateway.run_level(session, "ours", base, "stream", 8, 200, 2, args.chunks)  # warm-up
            spy = None
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                spy = await asyncio.create_subprocess_exec(
                    "py-spy", "record", "--pid", str(ours.proc.pid), "--rate", str(args.rate),
                    "--duration", str(int(args.seconds)), "--subprocesses",
                    *(["--nonblocking"] if args.nonblocking else []), "-o", args.out,
                    "--format", args.format, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                await asyncio.sleep(0.5)  # the sampler attaches
            cpu0 = ours.cpu_seconds()
            res = await gateway.run_level(session, "ours", base, "stream", args.concurrency, 100000,
                                          args.seconds - 1 if spy else args.seconds, args.chunks)
            cpu = ours.cpu_seconds() - cpu0
            if spy is not None:
                _, err = await spy.communicate()
                if spy.returncode:
                    print(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
                else:
                    print(f"flame graph: {args.out}")
        per = cpu / res.requests * 1e6 if res.requests else float("nan")
        print(f"streams/s {res.rps:.1f}  ttfc p50 {res.ttfc_ms['p50']:.2f} p99 {res.ttfc_ms['p99']:.2f} ms  "
              f"gap p50 {res.gap_ms['p50']:.2f} p99 {res.gap_ms['p99']:.2f} max {res.gap_ms['max']:.2f} ms  "
              f"cpu {per:.0f} us/stream  errors {res.errors} {res.first_error or ''}")
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(gateway.OUT / "stream.svg"), help="Flame graph path.")
    parser.add_argument("--no-profile", dest="out", action="store_const", const="",
                        help="Measure only, without the sampler.")
    parser.add_argument("--format", default="flamegraph", choices=["flamegraph", "speedscope", "raw"])
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second.")
    parser.add_argument("--nonblocking", action="store_true",
                        help="Sample without pausing the process (less overhead, less exact stacks).")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--policy", choices=sorted(gateway.POLICIES), default="rr")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
