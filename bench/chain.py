"""Benchmark of the daemon on anvil with the real TNT Core contracts.

    python bench/chain.py                # 200 jobs at once, then 200 at a steady rate
    python bench/chain.py --long         # also the RSS growth from the 200th to the 2000th job

The daemon runs as a subprocess (``python -m blueprint run``, the manager's environment) with a
zero-cost engine (``bench/echo_engine.py``, loaded by dotted path), so the figures are the
daemon's own: chain intake, ledger, routing, encoding, submission. Overhead per job is read from
the daemon's ledger: ``submitted_at - seen_at`` (the log recorded as seen, to the result
transaction sent), minus the handler's time (``answered_at - started_at``, near zero here).
Results are read back from ``JobResultSubmitted`` logs to count duplicates and missing answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blueprint.devnet.anvil import DEV_KEYS, start_anvil
from blueprint.devnet.setup import submit_job, submit_jobs
from blueprint.devnet.stack import DaemonProcess, chain_client, create_service, write_config
from blueprint.jobs.codec import encode_inputs

MODEL = "echo"
#: The consumer's batching knobs ([jobs] table); None keeps the daemon defaults.
BATCHING: dict[str, float] = {}
INPUTS = encode_inputs(MODEL, 16, {"messages": [{"role": "user", "content": "ping"}]})


class RssSampler(threading.Thread):
    """Samples the daemon's RSS every 50 ms; keeps the peak and the value at chosen job counts."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.current = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.current = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, self.current)
            time.sleep(0.05)


def ledger_rows(data_dir: Path, call_ids: list[int]) -> list[tuple]:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        marks = ",".join("?" * len(call_ids))
        return db.execute(
            f"SELECT call_id, state, seen_at, started_at, answered_at, submitted_at, confirmed_at FROM jobs "
            f"WHERE call_id IN ({marks})", call_ids).fetchall()


def confirmed_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'confirmed'").fetchone()[0]


async def wait_confirmed(data_dir: Path, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while confirmed_count(data_dir) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {confirmed_count(data_dir)}/{n} confirmed after {timeout_s}s")
        await asyncio.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(title: str, rows: list[tuple]) -> dict[str, float]:
    overhead = [((r[5] - r[2]) - (r[4] - r[3])) * 1000 for r in rows if r[5] and r[2] and r[3] and r[4]]
    raw = [(r[5] - r[2]) * 1000 for r in rows if r[5] and r[2]]
    span = max(r[5] for r in rows if r[5]) - min(r[2] for r in rows if r[2])
    out = {"p50_ms": statistics.median(overhead), "p99_ms": pct(overhead, 0.99),
           "raw_p50_ms": statistics.median(raw), "raw_p99_ms": pct(raw, 0.99), "jobs_per_s": len(rows) / span}
    stages = {name: statistics.median([(r[b] - r[a]) * 1000 for r in rows if r[a] and r[b]])
              for name, a, b in (("seen->running", 2, 3), ("running->answered", 3, 4),
                                 ("answered->sent", 4, 5), ("sent->confirmed", 5, 6))}
    out.update(stages)
    print(f"{title}: {len(rows)} jobs, own overhead p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms "
          f"(seen->sent incl. handler p50 {out['raw_p50_ms']:.1f} / p99 {out['raw_p99_ms']:.1f} ms), "
          f"{out['jobs_per_s']:.1f} jobs/s")
    print("   median per stage: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()))
    return out


async def bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    anvil = start_anvil()
    daemon = None
    try:
        async with chain_client(anvil) as client:
            service = await create_service(client, DEV_KEYS[0], work / "keystore")
        config = write_config(work / "config.toml", [
            {"engine": "bench.echo_engine:EchoClient", "model": MODEL, "max_batch_size": 256,
             "max_queue": 4096},
        ], server_enabled=False, jobs={"poll_interval_s": 0.5, "max_concurrent": 64, **BATCHING})
        env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env["BLUEPRINT_CONFIG"] = str(config)
        daemon = DaemonProcess(env, work / "daemon.log").start()
        daemon.wait_ready()
        sampler = RssSampler(daemon.pid)  # type: ignore[arg-type]
        sampler.start()
        data = work / "data"
        all_ids: list[int] = []
        async with chain_client(anvil) as client:
            owner, sid = service.owner, service.service_id
            ids = await submit_jobs(client, owner, sid, [(0, INPUTS)] * args.burst)
            all_ids += ids
            await wait_confirmed(data, len(all_ids), 300)
            burst = report(f"burst ({args.burst} at once)", ledger_rows(data, ids))
            rss_200 = sampler.current
            ids = []
            period = 1.0 / args.rate
            next_at = time.monotonic()
            for _ in range(args.steady):
                ids.append(await submit_job(client, owner, sid, 0, INPUTS))
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            all_ids += ids
            await wait_confirmed(data, len(all_ids), 300)
            steady = report(f"steady ({args.steady} at {args.rate}/s)", ledger_rows(data, ids))
            growth = None
            if args.long:
                total = 2000
                while len(all_ids) < total:
                    chunk = min(200, total - len(all_ids))
                    all_ids += await submit_jobs(client, owner, sid, [(0, INPUTS)] * chunk)
                    await wait_confirmed(data, len(all_ids), 300)
                await asyncio.sleep(1.0)
                growth = (sampler.current - rss_200) / rss_200 * 100
            logs = await client.result_logs(sid, operator=service.operator.address)
        counts = Counter(entry.call_id for entry in logs)
        duplicates = sum(1 for cid in all_ids if counts[cid] > 1)
        missing = sum(1 for cid in all_ids if counts[cid] == 0)
        sampler.stop_event.set()
        print(f"results: {len(all_ids)} jobs, duplicates {duplicates}, missing {missing}")
        print(f"daemon peak RSS {sampler.peak / 2**20:.1f} MiB")
        if growth is not None:
            print(f"RSS growth from job {args.burst} to job {len(all_ids)}: {growth:+.1f}% "
                  f"({rss_200 / 2**20:.1f} -> {sampler.current / 2**20:.1f} MiB)")
        targets = [burst["p50_ms"] <= 50, steady["p50_ms"] <= 50, burst["p99_ms"] <= 250,
                   steady["p99_ms"] <= 250, duplicates == 0, missing == 0]
        targets += [growth < 10] if growth is not None else []
        print("targets met" if all(targets) else "TARGETS MISSED")
        return 0 if duplicates == 0 and missing == 0 else 1
    finally:
        if daemon is not None:
            daemon.stop()
        anvil.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=200, help="Jobs submitted at once.")
    parser.add_argument("--steady", type=int, default=200, help="Jobs submitted at a steady rate.")
    parser.add_argument("--rate", type=float, default=20.0, help="Jobs per second of the steady phase.")
    parser.add_argument("--long", action="store_true", help="Run to 2000 jobs and report RSS growth.")
    parser.add_argument("--batch-window", type=float, default=None, help="jobs.batch_window_s of the daemon.")
    parser.add_argument("--max-batch", type=int, default=None, help="jobs.max_batch of the daemon.")
    args = parser.parse_args()
    if args.batch_window is not None:
        BATCHING["batch_window_s"] = args.batch_window
    if args.max_batch is not None:
        BATCHING["max_batch"] = args.max_batch
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
