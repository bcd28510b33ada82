"""Gateway overhead: the same load against a trivial backend directly and through each gateway:
ours, the Rust routers operators put in front of vLLM (``vllm-router``, ``smg``), and LiteLLM.

One run, one load generator (an aiohttp client on uvloop, a fixed number of workers per level,
bounded by a request count and a time limit), the same two backends for every gateway:

* ``trivial``: the emulated OpenAI-compatible backend (``blueprint.testing.emulated_backend``) in
  its zero-cost mode: non-streamed throughput and added latency;
* ``paced``: the same backend streaming ``--chunks`` tokens ``--interval-ms`` apart (no prefill,
  no batch penalty): time to first chunk and the gaps between chunks, so any buffering or
  per-chunk cost a gateway adds shows up, and streamed throughput.

Gateways, each a separate process on loopback:

* ``ours-rr`` / ``ours-ca``: ``python -m blueprint serve`` with one ``openai`` node per backend,
  strategy round robin / cache-aware (``ours-ca-wN`` with ``--ours-workers N``: N worker processes
  on one port, ``server.workers``);
* ``vllm-router-rr`` / ``-ca`` and ``smg-rr`` / ``-ca``: installed from PyPI into their own venvs
  under ``bench/`` (``.vllm-router-venv``, ``.smg-venv``) the first time, one router process per
  backend (they route by worker, not by model) with ``--policy round_robin`` / ``cache_aware``;
* ``litellm``: ``litellm[proxy]`` in ``bench/.litellm-venv`` (``--with-litellm``; slow to install).

Every level runs ``--rounds`` times, the gateways in a rotated order each round; the report gives
the median of the rounds (and the range) per figure, and every figure of ours as a ratio to each
peer's from the same run. CPU per request is the gateway process's user+system CPU time (all its
threads and worker processes, from /proc) over the level, divided by the requests it served.

    python bench/gateway.py                       # ours, vllm-router, smg; 3 rounds, ~6 minutes
    python bench/gateway.py --rounds 1 --seconds 2 --targets ours-rr vllm-router-rr   # quick look
    python bench/gateway.py --targets ours-rr vllm-router-rr --ours-tree /tmp/before  # before/after

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
BENCH = ROOT / "bench"
OUT = BENCH / "out"
KEY = "sk-bench-master-key"
TRIVIAL, PACED = "bench-trivial", "bench-paced"
BODY_MESSAGES = [{"role": "user", "content": "Say something short about gateways."}]
#: The peers installed from PyPI: name -> (package pin, executable in its venv).
PEERS = {"vllm-router": ("vllm-router==0.1.17", "vllm-router"), "smg": ("smg==1.13.0", "smg")}
POLICIES = {"rr": "round_robin", "ca": "cache_aware"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 workdir: Path | None = None, ready_line: bool = False) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if ready_line else self._log,
                                     stderr=self._log, env=env, cwd=workdir)

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

    def cpu_seconds(self) -> float:
        """User+system CPU of the process, its threads and its live descendants."""
        return sum(_cpu_of(pid) for pid in _tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
    return pids


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_backend(name: str, *extra: str) -> tuple[Proc, int]:
    proc = Proc(name, [sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0", *extra],
                workdir=ROOT, ready_line=True)
    return proc, proc.read_ready_port(30)


def python_label(python: str) -> str:
    """``py312`` for a Python 3.12 interpreter: the suffix of the targets it serves."""
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2], sep='')"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    return f"py{version}"


def start_ours(name: str, trivial_port: int, paced_port: int, workdir: Path, strategy: str,
               workers: int, python: str = sys.executable, tree: Path = ROOT) -> tuple[Proc, int]:
    config = workdir / f"{name}.toml"
    nodes = ""
    for model, port in ((TRIVIAL, trivial_port), (PACED, paced_port)):
        nodes += (f'[[nodes]]\nname = "{model}"\nengine = "openai"\nmodel = "{model}"\n'
                  f'base_url = "http://127.0.0.1:{port}/v1"\nmax_batch_size = 512\nmax_queue = 1024\n\n')
    server = f'[server]\napi_keys = ["{KEY}"]\n'
    if workers > 1:
        server += f"workers = {workers}\n"
    config.write_text(f'{server}\n[balancer]\nstrategy = "{strategy}"\n\n{nodes}')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("API_KEYS", None)
    if python != sys.executable or tree != ROOT:  # another interpreter's environment, or another
        env["PYTHONPATH"] = str(tree)               # checkout's code
    proc = Proc(name, [python, "-m", "blueprint", "serve", "--config", str(config), "--port", "0"],
                env=env, workdir=tree, ready_line=True)
    return proc, proc.read_ready_port(60)


def ensure_venv(name: str, requirement: str, exe_name: str, install_timeout: float) -> Path:
    """The executable of a peer installed into ``bench/.<name>-venv``, installing it once."""
    venv = BENCH / f".{name}-venv"
    exe = venv / "bin" / exe_name
    if exe.exists():
        return exe
    print(f"installing {requirement} into {venv} (first run only) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", requirement], check=True,
                   timeout=install_timeout)
    if not exe.exists():
        raise RuntimeError(f"{requirement} installed but {exe} is missing")
    return exe


def start_peer(peer: str, exe: Path, policy: str, backend_port: int) -> tuple[Proc, int]:
    """One Rust router in front of one backend (they balance over workers, not models)."""
    port, metrics_port = free_port(), free_port()
    argv = [str(exe)] + (["launch"] if peer == "smg" else [])
    argv += ["--worker-urls", f"http://127.0.0.1:{backend_port}", "--host", "127.0.0.1",
             "--port", str(port), "--prometheus-port", str(metrics_port), "--policy", policy,
             "--log-level", "warn" if peer == "smg" else "warning"]
    return Proc(f"{peer}-{policy}", argv, workdir=ROOT), port


def start_litellm(exe: Path, trivial_port: int, paced_port: int, workdir: Path) -> tuple[Proc, int]:
    config = workdir / "litellm.yaml"
    models = "".join(
        f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
        f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: unused\n"
        for model, p in ((TRIVIAL, trivial_port), (PACED, paced_port)))
    config.write_text(f"model_list:\n{models}")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": KEY,
           "LITELLM_LOG": "ERROR", "HF_HUB_OFFLINE": "1", "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"}
    port = free_port()
    return Proc("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                            "--num_workers", "1"], env=env, workdir=workdir), port


async def wait_answering(base: str, model: str, limit_s: float, proc: Proc) -> None:
    """Until the gateway answers a real chat request with 200 (routers need their workers up)."""
    deadline = time.monotonic() + limit_s
    body = {"model": model, "messages": BODY_MESSAGES, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {KEY}"}
    last = ""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with session.post(base + "/chat/completions", json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=3)) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}: {(await response.text())[:200]}"
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{proc.name} did not answer at {base} within {limit_s:.0f} s ({last}):\n"
                       f"{proc.tail()}")


# ---------------------------------------------------------------------------------------------
# load generation


@dataclass
class LevelResult:
    target: str
    mode: str  # "unary" or "stream"
    concurrency: int
    round: int = 0
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    cpu_us_per_request: float = float("nan")
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
            "p999": pct(values, 0.999), "max": max(values) if values else float("nan"),
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
    result.latency_ms = summary([x * 1000 for x in latencies]) if latencies else {}
    result.ttfc_ms = summary([x * 1000 for x in ttfcs]) if ttfcs else {}
    result.gap_ms = summary([x * 1000 for x in gaps]) if gaps else {}
    return result


@dataclass
class Target:
    """One gateway (or ``direct``): where its unary and streamed requests go, and its processes."""

    name: str
    unary_base: str
    stream_base: str
    procs: list[Proc] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds() for proc in self.procs)


LEVELS: list[tuple[str, str]] = [("unary", "concurrency"), ("stream", "stream_concurrency")]


async def measure(target: Target, args: argparse.Namespace, round_no: int) -> list[LevelResult]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up: connections, caches, lazy imports on every side
        await run_level(session, target.name, target.unary_base, "unary", 4, 200, 2, args.chunks)
        await run_level(session, target.name, target.stream_base, "stream", 4, 8, 2, args.chunks)
        for mode, attr in LEVELS:
            for concurrency in getattr(args, attr):
                base = target.unary_base if mode == "unary" else target.stream_base
                limit = args.requests if mode == "unary" else args.stream_requests
                cpu0 = target.cpu_seconds()
                res = await run_level(session, target.name, base, mode, concurrency, limit, args.seconds,
                                      args.chunks)
                cpu = target.cpu_seconds() - cpu0
                res.round = round_no
                if target.procs and res.requests:
                    res.cpu_us_per_request = cpu / res.requests * 1e6
                results.append(res)
                if mode == "unary":
                    detail = (f"p50 {res.latency_ms.get('p50', float('nan')):7.2f} ms  "
                              f"p99 {res.latency_ms.get('p99', float('nan')):7.2f} ms")
                else:
                    detail = (f"ttfc p50 {res.ttfc_ms.get('p50', float('nan')):6.2f} "
                              f"p99 {res.ttfc_ms.get('p99', float('nan')):6.2f} ms  "
                              f"gap p50 {res.gap_ms.get('p50', float('nan')):5.2f} "
                              f"p99 {res.gap_ms.get('p99', float('nan')):5.2f} ms")
                print(f"  r{round_no} {target.name:15s} {mode:6s} c={concurrency:<3d} {res.rps:8.1f} req/s  "
                      f"{detail}  cpu {res.cpu_us_per_request:6.0f} us/req  errors {res.errors}"
                      + (f" ({res.first_error})" if res.errors else ""), flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# report

#: (key, label, mode, which concurrency list and its end (0: min, -1: max), extractor, lower is better)
FIGURES: list[tuple[str, str, str, str, int, Any, bool]] = [
    ("added_p50_ms", "added latency p50, c={c}, non-streamed (ms)", "unary", "concurrency", 0,
     lambda r: r.latency_ms.get("p50"), True),
    ("added_p99_ms", "added latency p99, c={c}, non-streamed (ms)", "unary", "concurrency", 0,
     lambda r: r.latency_ms.get("p99"), True),
    ("rps_unary", "requests/s, c={c}, non-streamed", "unary", "concurrency", -1, lambda r: r.rps, False),
    ("cpu_unary", "gateway CPU per request, c={c}, non-streamed (us)", "unary", "concurrency", -1,
     lambda r: r.cpu_us_per_request, True),
    ("rps_stream", "streamed requests/s, c={c}", "stream", "stream_concurrency", -1, lambda r: r.rps, False),
    ("ttfc_p50_ms", "time to first chunk p50, c={c}, streamed (ms)", "stream", "stream_concurrency", -1,
     lambda r: r.ttfc_ms.get("p50"), True),
    ("ttfc_p99_ms", "time to first chunk p99, c={c}, streamed (ms)", "stream", "stream_concurrency", -1,
     lambda r: r.ttfc_ms.get("p99"), True),
    ("gap_p50_ms", "inter-chunk gap p50, c={c}, streamed (ms)", "stream", "stream_concurrency", -1,
     lambda r: r.gap_ms.get("p50"), True),
    ("gap_p99_ms", "inter-chunk gap p99, c={c}, streamed (ms)", "stream", "stream_concurrency", -1,
     lambda r: r.gap_ms.get("p99"), True),
    ("cpu_stream", "gateway CPU per streamed request, c={c} (us)", "stream", "stream_concurrency", -1,
     lambda r: r.cpu_us_per_request, True),
]


def _rounds(results: list[LevelResult], target: str, mode: str, concurrency: int) -> list[LevelResult]:
    return [r for r in results if (r.target, r.mode, r.concurrency) == (target, mode, concurrency)]


def figure(results: list[LevelResult], target: str, key: str, args: argparse.Namespace) -> list[float]:
    """One figure's value in every round (added latency: minus direct's in the same round)."""
    spec = next(f for f in FIGURES if f[0] == key)
    _, _, mode, attr, end, extract, _ = spec
    concurrency = getattr(args, attr)[end]
    values = []
    for res in _rounds(results, target, mode, concurrency):
        value = extract(res)
        if value is None or value != value:
            continue
        if key.startswith("added_"):
            direct = next((d for d in _rounds(results, "direct", mode, concurrency)
                           if d.round == res.round), None)
            base = extract(direct) if direct is not None else None
            if base is None:
                continue
            value -= base
        values.append(float(value))
    return values


def report(results: list[LevelResult], targets: list[str], args: argparse.Namespace,
           notes: list[str]) -> dict[str, Any]:
    medians: dict[str, dict[str, float]] = {t: {} for t in targets}
    ranges: dict[str, dict[str, tuple[float, float]]] = {t: {} for t in targets}
    for target in targets:
        for key, *_ in FIGURES:
            values = figure(results, target, key, args)
            if values:
                medians[target][key] = statistics.median(values)
                ranges[target][key] = (min(values), max(values))
    gateways = [t for t in targets if t != "direct"]
    width = max(15, *(len(t) for t in gateways)) if gateways else 15
    lines = [f"\nmedians of {args.rounds} round(s) [min-max]; "
             "added latency = gateway minus direct, same round"]
    for key, label, _mode, attr, end, _x, _lower in FIGURES:
        lines.append("\n" + label.format(c=getattr(args, attr)[end]))
        for target in targets:
            if key.startswith("added_") and target == "direct":
                continue
            if key not in medians[target]:
                continue
            lo, hi = ranges[target][key]
            lines.append(f"  {target:{width}s} {medians[target][key]:10.3f}  [{lo:.3f}-{hi:.3f}]")
    ours = [t for t in gateways if t.startswith("ours")]
    peers = [t for t in gateways if not t.startswith("ours")]
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    if ours and peers:
        lines.append("\nratios, ours / peer (same run; for times and CPU lower is better, for req/s higher)")
        header = f"  {'figure':14s} " + " ".join(f"{o + '/' + p:>{max(12, len(o) + len(p) + 1)}s}"
                                                  for o in ours for p in peers)
        lines.append(header)
        for key, *_ in FIGURES:
            row = f"  {key:14s} "
            for o in ours:
                for p in peers:
                    a, b = medians[o].get(key), medians[p].get(key)
                    ratio = a / b if a is not None and b not in (None, 0) else float("nan")
                    ratios.setdefault(o, {}).setdefault(p, {})[key] = ratio
                    row += f"{ratio:>{max(12, len(o) + len(p) + 1)}.2f} "
            lines.append(row)
    verdicts = targets_met(medians, args)
    text = "\n".join([*lines, "", *verdicts, *notes])
    print(text, flush=True)
    return {"medians": medians, "ranges": ranges, "ratios": ratios, "verdicts": verdicts, "notes": notes,
            "levels": [asdict(r) for r in results], "cpus": os.cpu_count(), "args": vars(args)}


def targets_met(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> list[str]:
    """Issue 15's targets, against vllm-router round robin from the same run."""
    out = ["targets (issue 15), ours against vllm-router-rr from this run:"]
    peer = medians.get("vllm-router-rr")
    for ours in [t for t in medians if t.startswith("ours")]:
        mine = medians[ours]
        checks = []
        if "added_p50_ms" in mine:
            added = mine["added_p50_ms"]
            checks.append(("added p50 at c=1 <= 0.6 ms", added, 0.6, added <= 0.6))
        if peer:
            for key, label, bound, lower in (
                    ("rps_unary", "non-streamed req/s >= 0.7x vllm-router", 0.7, False),
                    ("rps_stream", "streamed req/s >= 1.0x vllm-router", 1.0, False),
                    ("ttfc_p99_ms", "streamed TTFC p99 <= 2x vllm-router", 2.0, True)):
                if key in mine and peer.get(key):
                    ratio = mine[key] / peer[key]
                    checks.append((label, ratio, bound, ratio <= bound if lower else ratio >= bound))
        for label, value, _bound, met in checks:
            out.append(f"  {ours}: {label}: {value:.3f} ({'met' if met else 'NOT met'})")
    ceiling = medians.get("direct", {}).get("rps_stream")
    if ceiling:  # what the paced backend itself does: no gateway streams faster than it paces
        shares = ", ".join(f"{t} {m['rps_stream'] / ceiling:.3f}" for t, m in medians.items()
                           if t != "direct" and m.get("rps_stream"))
        out.append(f"streamed req/s as a share of direct's ({ceiling:.0f}/s, the backend's own pace): "
                   f"{shares}")
    return out


# ---------------------------------------------------------------------------------------------


async def start_targets(args: argparse.Namespace, trivial_port: int, paced_port: int, workdir: Path,
                        procs: list[Proc], notes: list[str]) -> list[Target]:
    def base(port: int) -> str:
        return f"http://127.0.0.1:{port}/v1"

    targets = [Target("direct", base(trivial_port), base(paced_port))]
    wanted = args.targets
    for policy in ("rr", "ca"):
        name = f"ours-{policy}"
        variants = [(name, 1, sys.executable, ROOT)]
        if args.ours_workers > 1 and policy == "ca":
            variants.append((f"{name}-w{args.ours_workers}", args.ours_workers, sys.executable, ROOT))
        if args.ours_python:
            variants.append((f"{name}-{python_label(args.ours_python)}", 1, args.ours_python, ROOT))
        if args.ours_tree:
            variants.append((f"{name}-{args.ours_tree.name}", 1, sys.executable, args.ours_tree))
        for variant, workers, python, tree in variants:
            if name not in wanted and wanted != ["all"]:
                continue
            proc, port = start_ours(variant, trivial_port, paced_port, workdir, POLICIES[policy], workers,
                                    python, tree)
            procs.append(proc)
            targets.append(Target(variant, base(port), base(port), [proc]))
    for peer, (requirement, exe_name) in PEERS.items():
        names = [f"{peer}-{p}" for p in POLICIES if f"{peer}-{p}" in wanted or wanted == ["all"]]
        if not names:
            continue
        try:
            exe = ensure_venv(peer, requirement, exe_name, args.install_timeout)
        except Exception as exc:  # measured what we can; say precisely why not this peer
            notes.append(f"{peer} not measured: {exc!r}"[:2000])
            print(notes[-1], flush=True)
            continue
        for name in names:
            policy = POLICIES[name.rsplit("-", 1)[1]]
            unary, unary_port = start_peer(peer, exe, policy, trivial_port)
            stream, stream_port = start_peer(peer, exe, policy, paced_port)
            procs += [unary, stream]
            targets.append(Target(name, base(unary_port), base(stream_port), [unary, stream]))
    if args.with_litellm:
        try:
            exe = ensure_venv("litellm", "litellm[proxy]", "litellm", args.install_timeout)
            lite, port = start_litellm(exe, trivial_port, paced_port, workdir)
            procs.append(lite)
            targets.append(Target("litellm", base(port), base(port), [lite]))
        except Exception as exc:
            notes.append(f"LiteLLM not measured: {exc!r}"[:2000])
    ready = []
    for target in targets[1:]:
        try:
            await wait_answering(target.unary_base, TRIVIAL, args.start_timeout, target.procs[0])
            await wait_answering(target.stream_base, PACED, args.start_timeout, target.procs[-1])
            ready.append(target)
        except RuntimeError as exc:
            notes.append(f"{target.name} not measured: {exc}"[:2000])
            print(notes[-1], flush=True)
    return [targets[0], *ready]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[Proc] = []
    notes: list[str] = []
    results: list[LevelResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    load_before = os.getloadavg()
    try:
        trivial, trivial_port = start_backend("trivial", "--model", TRIVIAL, "--trivial")
        procs.append(trivial)
        paced, paced_port = start_backend(
            "paced", "--model", PACED, "--prefill-s-per-token", "0", "--batch-penalty", "0",
            "--decode-s-per-token", str(args.interval_ms / 1000), "--max-num-seqs", "1024")
        procs.append(paced)
        print(f"backends: trivial :{trivial_port}, paced :{paced_port}", flush=True)
        targets = await start_targets(args, trivial_port, paced_port, workdir, procs, notes)
        print("targets: " + ", ".join(t.name for t in targets), flush=True)
        for round_no in range(args.rounds):
            order = targets[1:]
            shift = round_no % len(order) if order else 0
            for target in [targets[0], *order[shift:], *order[:shift]]:
                results += await measure(target, args, round_no)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    notes.append(f"machine load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} "
                 f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
                 f"on {os.cpu_count()} CPUs (the bench itself adds about 2)")
    return report(results, [t.name for t in targets], args, notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+",
                        default=["ours-rr", "ours-ca", "vllm-router-rr", "vllm-router-ca", "smg-rr",
                                 "smg-ca"],
                        help="Gateways to measure besides direct (or 'all').")
    parser.add_argument("--ours-workers", type=int, default=1,
                        help="Also measure ours-ca-wN: cache-aware with N worker processes.")
    parser.add_argument("--ours-python", default=None, metavar="PYTHON",
                        help="Also measure ours served by this interpreter (an environment with "
                             "blueprint's dependencies; this tree's code), e.g. a Python 3.12 venv's python.")
    parser.add_argument("--ours-tree", type=Path, default=None, metavar="DIR",
                        help="Also measure ours from another checkout (a before/after in one run), e.g. "
                             "git worktree add /tmp/before <rev>; named ours-rr-<DIR's name>.")
    parser.add_argument("--with-litellm", action="store_true", help="Also measure LiteLLM (slow install).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--stream-concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--requests", type=int, default=20000, help="Max unary requests per level.")
    parser.add_argument("--stream-requests", type=int, default=4000, help="Max streams per level.")
    parser.add_argument("--seconds", type=float, default=4.0, help="Max seconds per level.")
    parser.add_argument("--chunks", type=int, default=16, help="Tokens per streamed answer.")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="Backend gap between chunks.")
    parser.add_argument("--start-timeout", type=float, default=120.0)
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
