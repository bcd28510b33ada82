"""Where our gateway's CPU goes: a py-spy flame graph of the ``serve`` process under load.

Starts the trivial emulated backend and ``python -m blueprint serve`` (one ``openai`` node, the
same config as ``bench/gateway.py``'s ``ours-rr``), drives non-streamed (or streamed) requests at
a fixed concurrency with ``bench/gateway.py``'s load generator, and meanwhile samples the serve
process with ``py-spy record`` (CPU only, not idle time). Writes ``bench/out/NAME.svg`` and the
collapsed stacks ``bench/out/NAME.txt`` (one ``frame;frame;... count`` line per stack, for
``grep`` and for :func:`top_frames`), and prints the gateway's CPU per request over the run.

    python bench/flame.py --name unary-before                 # c=32 non-streamed, 8 s
    python bench/flame.py --name stream-x --stream --seconds 6
    python bench/flame.py --stream --no-profile               # the figures alone, no sampler

Streamed, it also prints streams/s, time to first chunk and the inter-chunk gaps; ``--chunks 2``
against ``--chunks 32`` separates what a stream costs from what each chunk costs.

py-spy is a dependency of the dev tools (``pip install py-spy``); it needs ptrace rights over the
serve process (root, or ``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway  # bench/gateway.py: processes and the load generator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blueprint.server.runner import run_with_uvloop


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def _record(pid: int, out: Path, fmt: str, seconds: float, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([_py_spy(), "record", "--pid", str(pid), "--rate", str(rate),
                             "--duration", str(int(seconds)), "--nonblocking", "--subprocesses",
                             "--format", fmt,
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (from /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / gateway.CLOCK_TICKS, int(fields[12]) / gateway.CLOCK_TICKS


def top_frames(collapsed: Path, limit: int = 30, *, inclusive: bool = False) -> list[tuple[str, float]]:
    """Time per frame as a share of all samples: self time (the leaf of each stack), or with
    ``inclusive`` the time of every stack the frame is on."""
    frames: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        for frame in set(stack.split(";")) if inclusive else (stack.rsplit(";", 1)[-1],):
            frames[frame] += samples
    return [(frame, samples / total) for frame, samples in frames.most_common(limit)] if total else []


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-flame-"))
    procs: list[gateway.Proc] = []
    try:
        backend, trivial_port = gateway.start_backend("trivial", "--model", gateway.TRIVIAL, "--trivial")
        procs.append(backend)
        paced, paced_port = gateway.start_backend(
            "paced", "--model", gateway.PACED, "--prefill-s-per-token", "0", "--batch-penalty", "0",
            "--decode-s-per-token", str(args.interval_ms / 1000), "--max-num-seqs", "1024")
        procs.append(paced)
        ours, port = gateway.start_ours("ours-flame", trivial_port, paced_port, workdir,
                                        gateway.POLICIES[args.policy], args.workers)
        procs.append(ours)
        base = f"http://127.0.0.1:{port}/v1"
        model = gateway.PACED if args.stream else gateway.TRIVIAL
        await gateway.wait_answering(base, model, 60, ours)
        mode = "stream" if args.stream else "unary"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await gateway.run_level(session, "ours", base, mode, 4, 300, 2, args.chunks)  # warm-up
            gateway.OUT.mkdir(parents=True, exist_ok=True)
            svg, raw = gateway.OUT / f"{args.name}.svg", gateway.OUT / f"{args.name}.txt"
            spies = [] if args.no_profile else [
                _record(ours.proc.pid, svg, "flamegraph", args.seconds, args.rate),
                _record(ours.proc.pid, raw, "raw", args.seconds, args.rate)]
            if spies:
                await asyncio.sleep(0.5)  # let py-spy attach before the load starts
            cpu0, split0 = ours.cpu_seconds(), user_system(ours.proc.pid)
            result = await gateway.run_level(session, "ours", base, mode, args.concurrency, 10**9,
                                             args.seconds - 1, args.chunks)
            cpu, split1 = ours.cpu_seconds() - cpu0, user_system(ours.proc.pid)
            for spy in spies:
                _, err = spy.communicate(timeout=60)
                if spy.returncode:
                    print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    per = 1e6 / max(1, result.requests)
    split = (f"user {(split1[0] - split0[0]) * per:.0f}, system {(split1[1] - split0[1]) * per:.0f}"
             if args.workers == 1 else f"{args.workers} workers")
    sampled = "" if args.no_profile else f"; sampled by py-spy at {args.rate} Hz, which costs a little"
    print(f"{mode} c={args.concurrency}: {result.rps:.0f} req/s, errors {result.errors}, "
          f"gateway CPU {cpu * per:.0f} us/request ({split}{sampled})")
    if args.stream:
        print(f"streams/s {result.rps:.1f}  ttfc p50 {result.ttfc_ms['p50']:.2f} p99 "
              f"{result.ttfc_ms['p99']:.2f} ms  gap p50 {result.gap_ms['p50']:.2f} p99 "
              f"{result.gap_ms['p99']:.2f} max {result.gap_ms['max']:.2f} ms")
    if args.no_profile:
        return
    print(f"written: {svg}, {raw}")
    if raw.exists():
        for title, inclusive in (("self", False), ("inclusive", True)):
            print(f"{title} time by frame:")
            for frame, share in top_frames(raw, args.top, inclusive=inclusive):
                print(f"  {share * 100:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="unary", help="Output name under bench/out/.")
    parser.add_argument("--stream", action="store_true", help="Streamed requests (16 chunks, 2 ms apart).")
    parser.add_argument("--policy", choices=sorted(gateway.POLICIES), default="rr")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=2.0, help="Backend gap between chunks.")
    parser.add_argument("--workers", type=int, default=1, help="serve's worker processes (server.workers).")
    parser.add_argument("--no-profile", action="store_true", help="Measure only, without the sampler.")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second.")
    parser.add_argument("--top", type=int, default=30, help="Frames listed by self time.")
    args = parser.parse_args()
    run_with_uvloop(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
