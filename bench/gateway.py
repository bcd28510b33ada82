"""Gateway overhead: the same load against (a) a trivial backend directly, (b) our API in front of
it, (c) LiteLLM's proxy in front of it.

One run, one load generator (an aiohttp client on uvloop with a fixed number of workers, bounded
by a request count and a time limit per level), the same backends for all three:

* ``trivial``: the emulated OpenAI-compatible backend (``blueprint.testing.emulated_backend``) in
  its zero-cost mode, as a subprocess: non-streamed throughput and added latency.
* ``paced``: the same backend streaming ``--chunks`` tokens ``--interval-ms`` apart (no prefill,
  no batch penalty): time to first chunk and inter-chunk gaps, so that any buffering or per-chunk
  cost a gateway adds shows up.

Our server runs as ``python -m blueprint serve`` with one ``openai`` engine node per backend.
LiteLLM is installed into ``bench/.litellm-venv`` (``pip install 'litellm[proxy]'``) the first time
and started offline (``LITELLM_LOCAL_MODEL_COST_MAP=True``) with a master key and one worker.

    python bench/gateway.py                 # everything, ~2-3 minutes
    python bench/gateway.py --skip-litellm  # direct and ours only

Results are printed and written to ``bench/out/gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".litellm-venv"
OUT = ROOT / "bench" / "out"
KEY = "sk-bench-master-key"
TRIVIAL, PACED = "bench-trivial", "bench-paced"
BODY_MESSAGES = [{"role": "user", "content": "Say something short about gateways."}]


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 workdir: Path | None = None) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=workdir)

    def read_ready_port(self, timeout: float) -> int:
        """For processes that print ``READY <port>`` (ours and the emulated backend)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(b"READY "):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def start_backend(name: str, *extra: str) -> tuple[Proc, int]:
    proc = Proc(name, [sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0", *extra],
                workdir=ROOT)
    return proc, proc.read_ready_port(30)


def start_ours(trivial_port: int, paced_port: int, workdir: Path) -> tuple[Proc, int]:
    config = workdir / "operator.toml"
    nodes = ""
    for model, port in ((TRIVIAL, trivial_port), (PACED, paced_port)):
        nodes += (f'[[nodes]]\nname = "{model}"\nengine = "openai"\nmodel = "{model}"\n'
                  f'base_url = "http://127.0.0.1:{port}/v1"\nmax_batch_size = 512\nmax_queue = 1024\n\n')
    config.write_text(f'[server]\napi_keys = ["{KEY}"]\n\n{nodes}')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("API_KEYS", None)
    proc = Proc("ours", [sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0"],
                env=env, workdir=ROOT)
    return proc, proc.read_ready_port(60)


def ensure_litellm(install_timeout: float) -> Path:
    """The ``litellm`` executable of the bench's own venv, installing it the first time."""
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy] into {VENV} (first run only) ...", flush=True)
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True,
                   timeout=install_timeout)
    if not exe.exists():
        raise RuntimeError(f"litellm installed but {exe} is missing")
    return exe


def start_litellm(exe: Path, trivial_port: int, paced_port: int, port: int, workdir: Path) -> Proc:
    config = workdir / "litellm.yaml"
    models = "".join(
        f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
        f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: unused\n"
        for model, p in ((TRIVIAL, trivial_port), (PACED, paced_port)))
    config.write_text(f"model_list:\n{models}")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": KEY,
           "LITELLM_LOG": "ERROR", "HF_HUB_OFFLINE": "1", "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"}
    return Proc("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                            "--num_workers", "1"], env=env, workdir=workdir)


async def wait_http(url: str, limit_s: float, proc: Proc) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{proc.name} did not answer {url} within {limit_s:.0f} s:\n{proc.tail()}")


# ---------------------------------------------------------------------------------------------
# load generation


@dataclass
class LevelResult:
    target: str
    mode: str  # "unary" or "stream"
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # unary: whole request
    ttfc_ms: dict[str, float] = field(default_factory=dict)  # stream: time to first content chunk
    gap_ms: dict[str, float] = field(default_factory=dict)  # stream: gaps between content chunks
    first_error: str | None = None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.50), "p90": pct(values, 0.90), "p99": pct(values, 0.99),
            "mean": statistics.fmean(values) if values else float("nan")}


async def run_level(session: aiohttp.ClientSession, target: str, base: str, mode: str, concurrency: int,
                    max_requests: int, max_seconds: float, chunks: int) -> LevelResult:
    stream = mode == "stream"
    model = PACED if stream else TRIVIAL
    body = json.dumps({"model": model, "messages": BODY_MESSAGES, "max_tokens": chunks if stream else 16,
                       "stream": stream}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = base + "/chat/completions"
    result = LevelResult(target, mode, concurrency)
    latencies: list[float] = []
    ttfcs: list[float] = []
    gaps: list[float] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def one() -> None:
        started = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            if not stream:
                await response.read()
                latencies.append(time.perf_counter() - started)
                return
            arrivals: list[float] = []
            done = False
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                    arrivals.append(time.perf_counter())
                elif line.startswith(b"data: [DONE]"):
                    done = True
            if not done or not arrivals:
                raise RuntimeError(f"stream incomplete ({len(arrivals)} content chunks, done={done})")
            ttfcs.append(arrivals[0] - started)
            gaps.extend(b - a for a, b in itertools.pairwise(arrivals))

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            try:
                await one()
                result.requests += 1
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or repr(exc)[:300]

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    result.rps = result.requests / result.seconds if result.seconds else 0.0
    ms = [x * 1000 for x in latencies]
    result.latency_ms = summary(ms) if ms else {}
    result.ttfc_ms = summary([x * 1000 for x in ttfcs]) if ttfcs else {}
    result.gap_ms = summary([x * 1000 for x in gaps]) if gaps else {}
    return result


async def measure(target: str, base: str, args: argparse.Namespace) -> list[LevelResult]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up: connections, caches, lazy imports on every side
        await run_level(session, target, base, "unary", 4, 200, 5, args.chunks)
        await run_level(session, target, base, "stream", 2, 4, 5, args.chunks)
        for concurrency in args.concurrency:
            res = await run_level(session, target, base, "unary", concurrency, args.requests, args.seconds,
                                  args.chunks)
            results.append(res)
            print(f"  {target:8s} unary  c={concurrency:<3d} {res.rps:8.1f} req/s  "
                  f"p50 {res.latency_ms.get('p50', float('nan')):7.2f} ms  "
                  f"p99 {res.latency_ms.get('p99', float('nan')):7.2f} ms  errors {res.errors}", flush=True)
        for concurrency in args.stream_concurrency:
            res = await run_level(session, target, base, "stream", concurrency, args.stream_requests,
                                  args.seconds, args.chunks)
            results.append(res)
            ttfc = res.ttfc_ms.get("p50", float("nan"))
            gap50, gap99 = res.gap_ms.get("p50", float("nan")), res.gap_ms.get("p99", float("nan"))
            print(f"  {target:8s} stream c={concurrency:<3d} ttfc p50 {ttfc:7.2f} ms  "
                  f"gap p50 {gap50:6.2f} ms  p99 {gap99:6.2f} ms  errors {res.errors}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# report


def find(results: list[LevelResult], target: str, mode: str, concurrency: int) -> LevelResult | None:
    for res in results:
        if (res.target, res.mode, res.concurrency) == (target, mode, concurrency):
            return res
    return None


def report(results: list[LevelResult], args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    rows: list[str] = []
    comparison: dict[str, Any] = {}
    targets = [t for t in ("ours", "litellm") if any(r.target == t for r in results)]
    rows.append("\nnon-streamed (added latency = gateway minus direct, same percentile)")
    rows.append(f"{'target':8s} {'conc':>4s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
                f"{'+p50 ms':>8s} {'+p99 ms':>8s} {'errors':>6s}")
    for concurrency in args.concurrency:
        direct = find(results, "direct", "unary", concurrency)
        for target in ("direct", *targets):
            res = find(results, target, "unary", concurrency)
            if res is None or direct is None:
                continue
            add50 = res.latency_ms.get("p50", float("nan")) - direct.latency_ms.get("p50", float("nan"))
            add99 = res.latency_ms.get("p99", float("nan")) - direct.latency_ms.get("p99", float("nan"))
            rows.append(f"{target:8s} {concurrency:4d} {res.rps:9.1f} {res.latency_ms.get('p50', 0):8.2f} "
                        f"{res.latency_ms.get('p99', 0):8.2f} {add50:8.2f} {add99:8.2f} {res.errors:6d}")
            comparison[f"unary_c{concurrency}_{target}"] = {"rps": res.rps, "added_p50_ms": add50,
                                                            "added_p99_ms": add99}
    rows.append(f"\nstreamed ({args.chunks} chunks, {args.interval_ms} ms apart at the backend)")
    rows.append(f"{'target':8s} {'conc':>4s} {'ttfc p50':>9s} {'+ttfc p50':>10s} {'+ttfc p99':>10s} "
                f"{'gap p50':>8s} {'+gap p50':>9s} {'+gap p99':>9s} {'errors':>6s}")
    for concurrency in args.stream_concurrency:
        direct = find(results, "direct", "stream", concurrency)
        for target in ("direct", *targets):
            res = find(results, target, "stream", concurrency)
            if res is None or direct is None or not res.ttfc_ms:
                continue
            t50 = res.ttfc_ms["p50"] - direct.ttfc_ms["p50"]
            t99 = res.ttfc_ms["p99"] - direct.ttfc_ms["p99"]
            g50 = res.gap_ms["p50"] - direct.gap_ms["p50"]
            g99 = res.gap_ms["p99"] - direct.gap_ms["p99"]
            rows.append(f"{target:8s} {concurrency:4d} {res.ttfc_ms['p50']:9.2f} {t50:10.2f} {t99:10.2f} "
                        f"{res.gap_ms['p50']:8.2f} {g50:9.2f} {g99:9.2f} {res.errors:6d}")
            comparison[f"stream_c{concurrency}_{target}"] = {
                "added_ttfc_p50_ms": t50, "added_ttfc_p99_ms": t99, "added_gap_p50_ms": g50,
                "added_gap_p99_ms": g99}
    top = max(args.concurrency)
    ours, lite = find(results, "ours", "unary", top), find(results, "litellm", "unary", top)
    verdicts = []
    if ours is not None and lite is not None and lite.rps:
        ratio = ours.rps / lite.rps
        comparison["throughput_ratio_ours_over_litellm"] = ratio
        verdicts.append(f"throughput ours/LiteLLM at c={top}: {ratio:.1f}x (target >= 10x)")
    if lite is not None and ours is not None:
        for concurrency in args.concurrency:
            o = comparison.get(f"unary_c{concurrency}_ours")
            m = comparison.get(f"unary_c{concurrency}_litellm")
            if o and m and o["added_p50_ms"] > 0:
                verdicts.append(f"added p50 latency at c={concurrency}: ours {o['added_p50_ms']:.2f} ms, "
                                f"LiteLLM {m['added_p50_ms']:.2f} ms "
                                f"({m['added_p50_ms'] / o['added_p50_ms']:.1f}x)")
    c1 = comparison.get(f"unary_c{min(args.concurrency)}_ours")
    if c1:
        verdicts.append(f"ours added p50 at c={min(args.concurrency)}: {c1['added_p50_ms']:.3f} ms "
                        "(target <= 1 ms)")
    s1 = comparison.get(f"stream_c{min(args.stream_concurrency)}_ours")
    if s1:
        verdicts.append(f"ours added inter-chunk p50 at c={min(args.stream_concurrency)}: "
                        f"{s1['added_gap_p50_ms']:.3f} ms (target <= 1 ms)")
    text = "\n".join([*rows, "", *verdicts, *notes])
    print(text, flush=True)
    return {"comparison": comparison, "verdicts": verdicts, "notes": notes,
            "levels": [asdict(r) for r in results], "cpus": os.cpu_count(), "args": vars(args)}


# ---------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[Proc] = []
    notes: list[str] = []
    results: list[LevelResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        trivial, trivial_port = start_backend("trivial", "--model", TRIVIAL, "--trivial")
        procs.append(trivial)
        paced, paced_port = start_backend(
            "paced", "--model", PACED, "--prefill-s-per-token", "0", "--batch-penalty", "0",
            "--decode-s-per-token", str(args.interval_ms / 1000))
        procs.append(paced)
        print(f"backends: trivial :{trivial_port}, paced :{paced_port}", flush=True)
        # One backend per mode, both reached the same way by all three targets.
        targets: list[tuple[str, str]] = []

        def direct_base(model_port: int) -> str:
            return f"http://127.0.0.1:{model_port}/v1"

        ours, ours_port = start_ours(trivial_port, paced_port, workdir)
        procs.append(ours)
        print(f"ours: :{ours_port}", flush=True)
        targets.append(("ours", f"http://127.0.0.1:{ours_port}/v1"))
        if not args.skip_litellm:
            try:
                exe = ensure_litellm(args.install_timeout)
                lport = args.litellm_port
                lite = start_litellm(exe, trivial_port, paced_port, lport, workdir)
                procs.append(lite)
                await wait_http(f"http://127.0.0.1:{lport}/health/liveliness",
                                args.litellm_start_timeout, lite)
                print(f"litellm: :{lport}", flush=True)
                targets.append(("litellm", f"http://127.0.0.1:{lport}/v1"))
            except Exception as exc:  # measured what we can; say precisely why not LiteLLM
                notes.append(f"LiteLLM not measured: {exc!r}"[:2000])
                print(notes[-1], flush=True)
        # The direct target talks to each backend at its own port: route by model via a tiny map.
        results += await measure_direct(args, direct_base(trivial_port), direct_base(paced_port))
        for name, base in targets:
            results += await measure(name, base, args)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report(results, args, notes)


async def measure_direct(args: argparse.Namespace, trivial_base: str, paced_base: str) -> list[LevelResult]:
    """The direct target: unary levels against the trivial backend, stream levels against the paced
    one (each backend serves only its own model)."""
    unary = await measure("direct", trivial_base,
                          argparse.Namespace(**{**vars(args), "stream_concurrency": []}))
    stream = await measure("direct", paced_base, argparse.Namespace(**{**vars(args), "concurrency": []}))
    return unary + stream


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--stream-concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=20000, help="Max unary requests per level.")
    parser.add_argument("--stream-requests", type=int, default=60, help="Max streams per level.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Max seconds per level.")
    parser.add_argument("--chunks", type=int, default=20, help="Tokens per streamed answer.")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="Backend gap between chunks.")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--litellm-port", type=int, default=4011)
    parser.add_argument("--litellm-start-timeout", type=float, default=120.0)
    parser.add_argument("--install-timeout", type=float, default=900.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
        runner_ctx = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner_ctx = asyncio.Runner()
    with runner_ctx as runner:
        data = runner.run(run(args))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gateway.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"\nwritten: {OUT / 'gateway.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
