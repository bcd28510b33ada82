"""Routing benchmark: every balancer strategy on the same emulated cluster and the same traffic.

The cluster is ``--nodes`` emulated OpenAI-compatible backends (``blueprint.testing.emulated_backend``
as separate processes on loopback). Their timing follows an LLM cost model: prefill time per prompt
token that misses the node's LRU prefix cache, decode time per output token rising with the node's
batch, and node 0 twice as slow as the rest. The balancer runs in this process and reaches the
backends with the openai engine (real HTTP, streaming), as the daemon does.

Workloads, each at a fixed concurrency (closed loop: ``--concurrency`` users, each sends its next
request when the previous answer ends):

* ``shared``: 16 long system prompts, many users each (a short user question after the system
  prompt): the case for cache-aware routing;
* ``uniform``: every prompt different, no shared prefixes: routing can only balance load;
* ``hot``: most requests share one system prompt, on a cluster where piling load on one node is
  punished (``--hot-batch-penalty``: decoding slows steeply with the node's batch, and a small
  ``--hot-max-num-seqs`` makes the rest queue): cache affinity alone would send the hot prefix to
  one node, so this tests load balancing as well.

Peers: ``--peers vllm-router,smg`` adds their cache-aware policies (``<peer>:cache_aware``), each
a separate router process (installed like ``bench/gateway.py`` does) over the same backends, driven
over HTTP; ``ours-http:cache_aware`` is our server (``python -m blueprint serve``) driven the
same way, so the HTTP hop is the same for all three. vllm-router's cache-aware policy asks the
backend for ``/v1/chat/completions/render`` and ``/tokenize``, which the emulated backend serves in
vLLM's shape.

Each run starts from cold caches, sends a warm-up (not measured), then measures throughput
(requests and output tokens per second), TTFT p50/p99, the prefix-cache hit rate (from the
backends' counters) and the share of requests that reached the slow node. A PNG of the TTFT
distributions is written to ``bench/out/routing.png``.

    python bench/routing.py            # full run (about 5 minutes)
    python bench/routing.py --quick    # a smaller run (about 1.5 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blueprint.balancer import Balancer, BalancerSettings  # noqa: E402
from blueprint.llm.config import NodeConfig  # noqa: E402
from blueprint.llm.engines.openai_http import OpenAIHttpClient  # noqa: E402
from blueprint.llm.types import ChatCompletionRequest, ChatMessage, StreamOptions  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import gateway  # noqa: E402  (the peers' install and start-up, shared with bench/gateway.py)

ALL_STRATEGIES = ["round_robin", "least_loaded", "power_of_two", "weighted", "capability", "latency",
                  "cache_aware"]
QUICK_STRATEGIES = ["round_robin", "least_loaded", "latency", "cache_aware"]
MODEL = "bench-model"
WORDS = ("tangle operator node chain block prefix cache batch queue route price answer model token "
         "value layer graph light stone river green quick brown lazy small large vector kernel").split()


@dataclass
class Backend:
    index: int
    process: asyncio.subprocess.Process
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass
class RunResult:
    workload: str
    strategy: str
    requests: int
    errors: int
    seconds: float
    output_tokens: int
    ttfts: list[float] = field(default_factory=list)
    hit_rate: float = 0.0
    per_node: list[int] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def ttft_pct(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    @property
    def slow_share(self) -> float:
        total = sum(self.per_node)
        return self.per_node[0] / total if total else 0.0


# ---------------------------------------------------------------------------- the cluster

async def start_backend(index: int, args: argparse.Namespace, *, hot: bool = False) -> Backend:
    penalty = args.hot_batch_penalty if hot else args.batch_penalty
    seqs = args.hot_max_num_seqs if hot else args.max_num_seqs
    flags = [
        "--model", MODEL, "--port", "0",
        "--prefill-s-per-token", str(args.prefill), "--decode-s-per-token", str(args.decode),
        "--batch-penalty", str(penalty), "--max-num-seqs", str(seqs),
        "--cache-blocks", str(args.cache_blocks), "--max-model-len", "32768",
        "--slowdown", "2.0" if index == 0 else "1.0", "--seed", str(index),
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blueprint.testing.emulated_backend", *flags,
        stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    if not line.startswith(b"READY"):
        process.kill()
        raise RuntimeError(f"backend {index} did not start: {line!r}")
    return Backend(index, process, int(line.split()[1]))


async def stop_backends(backends: list[Backend]) -> None:
    for backend in backends:
        if backend.process.returncode is None:
            backend.process.terminate()
    for backend in backends:
        try:
            await asyncio.wait_for(backend.process.wait(), 10)
        except TimeoutError:
            backend.process.kill()
            await backend.process.wait()


async def backend_stats(session: aiohttp.ClientSession, backends: list[Backend]) -> list[dict]:
    async def one(backend: Backend) -> dict:
        async with session.get(f"http://127.0.0.1:{backend.port}/stats") as resp:
            return await resp.json()
    return list(await asyncio.gather(*(one(b) for b in backends)))


async def reset_backends(session: aiohttp.ClientSession, backends: list[Backend]) -> None:
    for backend in backends:
        async with session.post(f"http://127.0.0.1:{backend.port}/reset") as resp:
            resp.raise_for_status()


# ---------------------------------------------------------------------------- workloads

def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


class Workload:
    """Deterministic request generator (same sequence for every strategy)."""

    def __init__(self, kind: str, seed: int, args: argparse.Namespace) -> None:
        self.kind = kind
        self.rng = random.Random(seed)
        self.args = args
        prompt_rng = random.Random(1234)
        self.systems = [f"System prompt {i}. " + words(prompt_rng, args.system_words) for i in range(16)]

    def next(self) -> ChatCompletionRequest:
        rng = self.rng
        if self.kind == "hot" and rng.random() < self.args.hot_share:
            system = self.systems[0]
        elif self.kind in ("shared", "hot"):
            system = rng.choice(self.systems)
        else:
            system = f"Unique context {rng.randrange(10**12)}: " + words(rng, self.args.uniform_words)
        user = f"user {rng.randrange(10**9)} asks: " + words(rng, 20)
        return ChatCompletionRequest(
            model=MODEL, max_tokens=self.args.max_tokens, stream=True,
            stream_options=StreamOptions(include_usage=True),
            messages=[ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)],
        )


async def _users(one: Callable[[float], Awaitable[tuple[float | None, int]]], total: int, concurrency: int,
                 ttfts: list[float] | None) -> tuple[int, int, int]:
    """``total`` requests sent by ``concurrency`` users, each by ``one(started)`` (which returns the
    time to first content and the output tokens); returns (ok, errors, output tokens)."""
    remaining = total
    ok = errors = tokens = 0

    async def user() -> None:
        nonlocal remaining, ok, errors, tokens
        while remaining > 0:
            remaining -= 1
            try:
                first, produced = await one(time.perf_counter())
            except Exception as exc:
                errors += 1
                print(f"  request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            ok += 1
            tokens += produced
            if ttfts is not None and first is not None:
                ttfts.append(first)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return ok, errors, tokens


async def drive(balancer: Balancer, workload: Workload, total: int, concurrency: int,
                ttfts: list[float] | None) -> tuple[int, int, int]:
    """Send ``total`` requests with ``concurrency`` users; returns (ok, errors, output tokens)."""

    async def one(started: float) -> tuple[float | None, int]:
        first: float | None = None
        tokens = 0
        async for chunk in balancer.chat_stream(workload.next()):
            if first is None:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                tokens += chunk.usage.completion_tokens
        return first, tokens

    return await _users(one, total, concurrency, ttfts)


async def drive_http(session: aiohttp.ClientSession, base_url: str, workload: Workload, total: int,
                     concurrency: int, ttfts: list[float] | None) -> tuple[int, int, int]:
    """:func:`drive` through a gateway over HTTP (streamed, first content chunk = TTFT)."""
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {gateway.KEY}", "Content-Type": "application/json"}

    async def one(started: float) -> tuple[float | None, int]:
        body = workload.next().model_dump_json(exclude_none=True).encode()
        first: float | None = None
        tokens = 0
        done = False
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif first is None and b'"content":"' in line and b'"content":""' not in line:
                    first = time.perf_counter() - started
                elif b'"usage":{' in line:
                    usage = json.loads(line[6:]).get("usage") or {}
                    tokens += int(usage.get("completion_tokens") or 0)
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        return first, tokens

    return await _users(one, total, concurrency, ttfts)


async def start_gateway(target: str, backends: list[Backend], args: argparse.Namespace,
                        workdir: Path) -> tuple[list[gateway.Proc], str]:
    """``ours-http`` or a peer (``vllm-router``, ``smg``) with its cache-aware policy in front of
    the backends, answering; returns its processes and base URL."""
    urls = [f"http://127.0.0.1:{b.port}" for b in backends]
    if target == "ours-http":
        config = workdir / "ours.toml"
        nodes = "".join(f'[[nodes]]\nname = "node{b.index}"\nengine = "openai"\nmodel = "{MODEL}"\n'
                        f'base_url = "{url}/v1"\nmax_batch_size = {args.node_limit}\nmax_queue = 256\n\n'
                        for b, url in zip(backends, urls, strict=True))
        config.write_text(
            f'[server]\napi_keys = ["{gateway.KEY}"]\n\n[balancer]\nstrategy = "cache_aware"\nseed = 11\n\n'
            f'[balancer.health]\ncheck_interval_s = 60\nmetrics_interval_s = 1.0\n\n'
            f'[balancer.cache_aware]\nmax_chars_per_node = {args.tree_chars}\n\n{nodes}')
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("API_KEYS", None)
        proc = gateway.Proc("ours-http", [sys.executable, "-m", "blueprint", "serve", "--config", str(config),
                                          "--port", "0"], env=env, workdir=ROOT, ready_line=True)
        base = f"http://127.0.0.1:{proc.read_ready_port(60)}/v1"
    else:
        requirement, exe_name = gateway.PEERS[target]
        exe = gateway.ensure_venv(target, requirement, exe_name, 900)
        port, metrics_port = gateway.free_port(), gateway.free_port()
        argv = [str(exe)] + (["launch"] if target == "smg" else [])
        argv += ["--worker-urls", *urls, "--host", "127.0.0.1", "--port", str(port),
                 "--prometheus-port", str(metrics_port), "--policy", "cache_aware",
                 "--log-level", "warn" if target == "smg" else "warning"]
        proc = gateway.Proc(target, argv, workdir=ROOT)
        base = f"http://127.0.0.1:{port}/v1"
    await gateway.wait_answering(base, MODEL, 120, proc)
    return [proc], base


async def run_one(kind: str, strategy: str, backends: list[Backend], session: aiohttp.ClientSession,
                  args: argparse.Namespace) -> RunResult:
    if ":" in strategy:
        return await run_one_http(kind, strategy, backends, session, args)
    await reset_backends(session, backends)
    configs = [
        NodeConfig(name=f"node{b.index}", engine="openai", model=MODEL, base_url=b.base_url,
                   max_batch_size=args.node_limit, max_queue=256, timeout_s=120)
        for b in backends
    ]
    settings = BalancerSettings.model_validate({
        "strategy": strategy, "seed": 11,
        "health": {"check_interval_s": 60, "metrics_interval_s": 1.0},
        # The prefix trees are bounded like the backends' caches (as an operator sizes them from
        # the KV cache), so a prefix a backend evicted stops counting as cached.
        "cache_aware": {"max_chars_per_node": args.tree_chars},
    })
    balancer = Balancer([OpenAIHttpClient(c) for c in configs], settings,
                        node_configs={c.node_name: c for c in configs})
    await balancer.start()
    workload = Workload(kind, seed=99, args=args)
    try:
        await drive(balancer, workload, args.warmup, args.concurrency, None)
        before = await backend_stats(session, backends)
        ttfts: list[float] = []
        started = time.perf_counter()
        ok, errors, tokens = await drive(balancer, workload, args.requests, args.concurrency, ttfts)
        seconds = time.perf_counter() - started
        after = await backend_stats(session, backends)
    finally:
        await balancer.close()
    pairs = list(zip(after, before, strict=True))
    hits = sum(a["prefix_cache_hits"] - b["prefix_cache_hits"] for a, b in pairs)
    queries = sum(a["prefix_cache_queries"] - b["prefix_cache_queries"] for a, b in pairs)
    per_node = [a["requests"] - b["requests"] for a, b in pairs]
    return RunResult(kind, strategy, ok, errors, seconds, tokens, ttfts,
                     hits / queries if queries else 0.0, per_node)


async def run_one_http(kind: str, strategy: str, backends: list[Backend], session: aiohttp.ClientSession,
                       args: argparse.Namespace) -> RunResult:
    target = strategy.split(":", 1)[0]
    workdir = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    procs: list[gateway.Proc] = []
    try:
        procs, base = await start_gateway(target, backends, args, workdir)
        await reset_backends(session, backends)
        workload = Workload(kind, seed=99, args=args)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=300)) as client:
            await drive_http(client, base, workload, args.warmup, args.concurrency, None)
            before = await backend_stats(session, backends)
            ttfts: list[float] = []
            started = time.perf_counter()
            ok, errors, tokens = await drive_http(client, base, workload, args.requests, args.concurrency,
                                                  ttfts)
            seconds = time.perf_counter() - started
            after = await backend_stats(session, backends)
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    pairs = list(zip(after, before, strict=True))
    hits = sum(a["prefix_cache_hits"] - b["prefix_cache_hits"] for a, b in pairs)
    queries = sum(a["prefix_cache_queries"] - b["prefix_cache_queries"] for a, b in pairs)
    per_node = [a["requests"] - b["requests"] for a, b in pairs]
    return RunResult(kind, strategy, ok, errors, seconds, tokens, ttfts,
                     hits / queries if queries else 0.0, per_node)


# ---------------------------------------------------------------------------- report

def print_table(results: list[RunResult]) -> None:
    header = (f"{'workload':<8} {'strategy':<13} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'cache hit':>9} {'slow node':>9} {'errors':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.workload:<8} {r.strategy:<13} {r.throughput:7.1f} {r.output_tokens / r.seconds:7.0f} "
              f"{r.ttft_pct(0.5) * 1000:7.0f}ms {r.ttft_pct(0.99) * 1000:7.0f}ms "
              f"{r.hit_rate:9.1%} {r.slow_share:9.1%} {r.errors:6d}")


def check_targets(results: list[RunResult]) -> list[str]:
    lines = []
    by = {(r.workload, r.strategy): r for r in results}
    rr, ca = by.get(("shared", "round_robin")), by.get(("shared", "cache_aware"))
    if rr and ca:
        ratio = ca.throughput / rr.throughput
        p99 = ca.ttft_pct(0.99) / rr.ttft_pct(0.99)
        lines.append(f"(a) cache_aware throughput {ratio:.2f}x round robin (target >= 1.5x): "
                     f"{'PASS' if ratio >= 1.5 else 'FAIL'}")
        lines.append(f"(a) cache_aware p99 TTFT {p99:.2f} of round robin (target <= 0.33): "
                     f"{'PASS' if p99 <= 1 / 3 else 'FAIL'}")
    for workload in ("shared", "uniform", "hot"):
        ours = by.get((workload, "ours-http:cache_aware"))
        for r in results:
            if ours and r.workload == workload and ":" in r.strategy and r is not ours:
                lines.append(f"({workload}) ours-http cache_aware / {r.strategy}: throughput "
                             f"{ours.throughput / r.throughput:.2f}x, p99 TTFT "
                             f"{ours.ttft_pct(0.99) / r.ttft_pct(0.99):.2f}x, cache hit {ours.hit_rate:.1%} "
                             f"vs {r.hit_rate:.1%}")
    base = by.get(("uniform", "round_robin"))
    if base:
        for r in results:
            if r.workload == "uniform" and r.strategy != "round_robin":
                rel = r.throughput / base.throughput
                lines.append(f"(b) {r.strategy} throughput {rel:.2f}x round robin (target >= 0.90): "
                             f"{'PASS' if rel >= 0.9 else 'FAIL'}")
        for name in ("latency", "least_loaded"):
            r = by.get(("uniform", name))
            if r:
                lines.append(f"(b) {name} sends {r.slow_share:.1%} to the slow node (target < 25%): "
                             f"{'PASS' if r.slow_share < 0.25 else 'FAIL'}")
    return lines


def write_chart(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in ("shared", "uniform") if any(r.workload == w for r in results)]
    fig, axes = plt.subplots(1, len(workloads), figsize=(7 * len(workloads), 5), squeeze=False)
    titles = {"shared": "(a) shared prefixes: 16 system prompts", "uniform": "(b) uniform: no shared prefix"}
    for ax, workload in zip(axes[0], workloads, strict=True):
        rows = [r for r in results if r.workload == workload]
        data = [[t * 1000 for t in r.ttfts] for r in rows]
        ax.boxplot(data, whis=(1, 99), showfliers=False)
        for i, r in enumerate(rows, start=1):
            ax.plot(i, r.ttft_pct(0.99) * 1000, marker="v", color="crimson", linestyle="none",
                    label="p99" if i == 1 else None)
        ax.set_xticks(range(1, len(rows) + 1))
        ax.set_xticklabels([f"{r.strategy}\n{r.throughput:.1f} req/s" for r in rows], rotation=30, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time to first token (ms, log scale)")
        ax.set_title(titles[workload])
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("TTFT per routing strategy (box: p25-p75, whiskers: p1-p99)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer strategies and requests")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--strategies", default=None, help="comma-separated (default: all)")
    parser.add_argument("--workloads", default="shared,uniform,hot")
    parser.add_argument("--peers", default="vllm-router,smg",
                        help="comma-separated peers whose cache_aware policy runs too ('' for none)")
    parser.add_argument("--hot-share", type=float, default=0.7, help="hot: share of the hot prefix")
    parser.add_argument("--hot-batch-penalty", type=float, default=0.25,
                        help="hot cluster: extra decode cost per running sequence")
    parser.add_argument("--hot-max-num-seqs", type=int, default=6, help="hot cluster: batch before queueing")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=None, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--system-words", type=int, default=600, help="words per shared system prompt")
    parser.add_argument("--uniform-words", type=int, default=150)
    parser.add_argument("--prefill", type=float, default=0.0003, help="s per uncached prompt token")
    parser.add_argument("--decode", type=float, default=0.006, help="s per output token, alone")
    parser.add_argument("--batch-penalty", type=float, default=0.05)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--cache-blocks", type=int, default=480, help="prefix-cache blocks per node")
    parser.add_argument("--tree-chars", type=int, default=None,
                        help="cache_aware prefix-tree bound per node (default: the backend cache's size "
                             "in characters, blocks * 16 pieces * ~3.2 characters per piece)")
    parser.add_argument("--node-limit", type=int, default=16, help="balancer slots per node")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "routing.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.tree_chars is None:
        args.tree_chars = int(args.cache_blocks * 16 * 3.2)
    if args.requests is None:
        args.requests = 320 if args.quick else 640
    if args.strategies is None:
        args.strategies = ",".join(QUICK_STRATEGIES if args.quick else ALL_STRATEGIES)
    return args


async def main_async(args: argparse.Namespace) -> list[RunResult]:
    clusters: dict[bool, list[Backend]] = {}
    results: list[RunResult] = []
    strategies = args.strategies.split(",")
    if args.peers:
        strategies += [f"{target}:cache_aware" for target in ("ours-http", *args.peers.split(","))]
    try:
        async with aiohttp.ClientSession() as session:
            for kind in args.workloads.split(","):
                hot = kind == "hot"
                if hot not in clusters:  # the hot workload runs on its own, punishing cluster
                    clusters[hot] = list(await asyncio.gather(
                        *(start_backend(i, args, hot=hot) for i in range(args.nodes))))
                backends = clusters[hot]
                for strategy in strategies:
                    result = await run_one(kind, strategy, backends, session, args)
                    results.append(result)
                    print(f"  {kind:<8} {strategy:<13} {result.throughput:6.1f} req/s  "
                          f"p99 TTFT {result.ttft_pct(0.99) * 1000:6.0f} ms  hit {result.hit_rate:.0%}  "
                          f"per node {result.per_node}", flush=True)
    finally:
        for backends in clusters.values():
            await stop_backends(backends)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print(f"{args.nodes} emulated nodes (node0 2x slow), concurrency {args.concurrency}, "
          f"{args.requests} measured requests per run after {args.warmup} warm-up", flush=True)
    results = asyncio.run(main_async(args))
    print()
    print_table(results)
    print()
    for line in check_targets(results):
        print(line)
    with contextlib.suppress(ImportError):
        write_chart(results, args.out)
        print(f"\nchart: {args.out}")
    if args.json:
        args.json.write_text(json.dumps([
            {"workload": r.workload, "strategy": r.strategy, "req_s": r.throughput,
             "ttft_p50_s": r.ttft_pct(0.5), "ttft_p99_s": r.ttft_pct(0.99), "hit_rate": r.hit_rate,
             "slow_share": r.slow_share, "errors": r.errors, "per_node": r.per_node,
             "ttft_mean_s": statistics.fmean(r.ttfts) if r.ttfts else None}
            for r in results], indent=2))
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
