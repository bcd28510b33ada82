"""Soak test: the daemon under mixed on-chain jobs and HTTP traffic for N minutes (not in CI).

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 2     # a short run

One anvil with the TNT Core state, one fresh service, one emulated OpenAI backend (a subprocess
with a small cost model) and the daemon as the blueprint manager runs it (``python -m blueprint
run``, which also serves the HTTP API). While it runs, a job submitter sends chat and completion
jobs at a steady rate and HTTP clients send chat requests (half of them streamed).

Reported: HTTP errors (non-200 answers, stream error events, streams without ``[DONE]``), on-chain
jobs lost or answered twice (from ``JobResultSubmitted`` logs), and the daemon's RSS and open file
descriptors at the start (after a warm-up), the middle and the end. Written to
``bench/out/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blueprint.devnet.anvil import DEV_KEYS, REPO_ROOT, start_anvil
from blueprint.devnet.setup import submit_job
from blueprint.devnet.stack import DaemonProcess, chain_client, create_service, write_config
from blueprint.jobs.codec import encode_inputs

MODEL = "soak"
API_KEY = "sk-soak-" + os.urandom(8).hex()
OUT = Path(__file__).resolve().parent / "out" / "soak.json"


def start_backend() -> tuple[subprocess.Popen[str], str]:
    """The emulated backend: 0.5 ms per output token, so requests cost a little real time."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0", "--model", MODEL,
         "--decode-s-per-token", "0.0005", "--prefill-s-per-token", "0.00001"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError("the emulated backend did not start")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


class Sample:
    """The daemon's RSS (bytes) and open file descriptors at one moment."""

    def __init__(self, process: psutil.Process, label: str, jobs: int, requests: int) -> None:
        self.label, self.jobs, self.requests = label, jobs, requests
        self.rss = process.memory_info().rss
        self.fds = process.num_fds()

    def row(self) -> dict[str, Any]:
        return {"at": self.label, "rss_mib": round(self.rss / 2**20, 1), "fds": self.fds,
                "jobs_submitted": self.jobs, "http_requests": self.requests}


class Load:
    """The traffic and its counters."""

    def __init__(self, url: str, anvil: Any, service: Any, job_interval: float, concurrency: int) -> None:
        self.url, self.anvil, self.service = url, anvil, service
        self.job_interval, self.concurrency = job_interval, concurrency
        self.call_ids: list[int] = []
        self.job_errors = 0
        self.http = Counter[str]()
        self.stop = asyncio.Event()

    async def jobs(self) -> None:
        async with chain_client(self.anvil) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                if n % 2:
                    job, body = 0, {"messages": [{"role": "user", "content": f"soak job {n}"}]}
                else:
                    job, body = 1, {"prompt": f"soak completion {n}"}
                try:
                    self.call_ids.append(await submit_job(client, self.service.owner, self.service.service_id,
                                                          job, encode_inputs(MODEL, 16, body)))
                except Exception as exc:  # a submission failure is the test client's, counted apart
                    self.job_errors += 1
                    print(f"job submission failed: {exc}", file=sys.stderr)
                try:
                    await asyncio.wait_for(self.stop.wait(), self.job_interval)
                except TimeoutError:
                    pass

    async def client(self, session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        while not self.stop.is_set():
            stream = rng.random() < 0.5
            body = {"model": MODEL, "max_tokens": rng.randint(4, 48), "stream": stream,
                    "messages": [{"role": "user", "content": f"client {seed} says {rng.random():.6f}"}]}
            try:
                url = f"{self.url}/v1/chat/completions"
                async with session.post(url, json=body, headers=headers) as reply:
                    if reply.status != 200:
                        self.http[f"status_{reply.status}"] += 1
                    elif stream:
                        text = await reply.text()
                        if '"error"' in text:
                            self.http["stream_error_event"] += 1
                        elif not text.rstrip().endswith("data: [DONE]"):
                            self.http["stream_truncated"] += 1
                        else:
                            self.http["ok"] += 1
                    else:
                        await reply.read()
                        self.http["ok"] += 1
            except Exception as exc:
                self.http[f"client_{type(exc).__name__}"] += 1
            await asyncio.sleep(rng.uniform(0.0, 0.05))

    @property
    def requests(self) -> int:
        return sum(self.http.values())


async def soak(minutes: float, job_interval: float, concurrency: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    anvil = start_anvil()
    backend, backend_url = start_backend()
    daemon: DaemonProcess | None = None
    try:
        async with chain_client(anvil) as client:
            service = await create_service(client, DEV_KEYS[0], work / "keystore")
        config = write_config(work / "config.toml", [
            {"name": "soak-node", "engine": "openai", "model": MODEL, "base_url": backend_url},
        ], jobs={"poll_interval_s": 0.5})
        env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env.update(BLUEPRINT_CONFIG=str(config), API_KEYS=API_KEY)
        daemon = DaemonProcess(env, work / "daemon.log").start()
        daemon.wait_ready()
        ready = next(line for line in daemon.log_lines() if line.get("event") == "daemon.ready")
        url = ready["http"].replace("0.0.0.0", "127.0.0.1")
        process = psutil.Process(daemon.pid)
        load = Load(url, anvil, service, job_interval, concurrency)
        duration = minutes * 60
        samples: list[Sample] = []
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.create_task(load.jobs())]
            tasks += [asyncio.create_task(load.client(session, i)) for i in range(concurrency)]
            started = time.monotonic()
            marks = [("start", 0.1), ("middle", 0.5), ("end", 1.0)]
            for label, fraction in marks:
                await asyncio.sleep(max(0.0, started + duration * fraction - time.monotonic()))
                samples.append(Sample(process, label, len(load.call_ids), load.requests))
                print(json.dumps(samples[-1].row()), flush=True)
            load.stop.set()
            await asyncio.gather(*tasks)
        # every job submitted must be answered once: give the last ones time to land
        deadline = time.monotonic() + 120
        async with chain_client(anvil) as client:
            while True:
                logs = await client.result_logs(service.service_id, operator=service.operator.address)
                counts = Counter(entry.call_id for entry in logs)
                missing = [cid for cid in load.call_ids if counts[cid] == 0]
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
        doubled = [cid for cid in load.call_ids if counts[cid] > 1]
        alive = daemon.process is not None and daemon.process.poll() is None
        log_errors = sum(1 for line in daemon.log_lines() if line.get("level") in ("error", "critical"))
        first, last = samples[0], samples[-1]
        report = {
            "minutes": minutes,
            "jobs_submitted": len(load.call_ids),
            "job_submission_errors": load.job_errors,
            "jobs_lost": len(missing),
            "jobs_answered_twice": len(doubled),
            "http": dict(load.http),
            "http_errors": load.requests - load.http["ok"],
            "daemon_alive": alive,
            "daemon_error_log_lines": log_errors,
            "samples": [s.row() for s in samples],
            "rss_growth_pct": round(100 * (last.rss - first.rss) / first.rss, 2),
            "fd_change": last.fds - first.fds,
        }
        return report
    finally:
        if daemon is not None:
            daemon.stop(timeout=30, sig=signal.SIGTERM)
        backend.terminate()
        backend.wait(10)
        anvil.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="How long the load runs (default 10).")
    parser.add_argument("--job-interval", type=float, default=0.5, help="Seconds between on-chain jobs.")
    parser.add_argument("--http-concurrency", type=int, default=4, help="Concurrent HTTP clients.")
    args = parser.parse_args()
    # the set-up helpers log every transaction at debug level: keep this process's output short
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = asyncio.run(soak(args.minutes, args.job_interval, args.http_concurrency))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = (report["jobs_lost"] == 0 and report["jobs_answered_twice"] == 0 and report["http_errors"] == 0
          and report["daemon_alive"] and report["rss_growth_pct"] < 10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
