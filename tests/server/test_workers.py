"""``server.workers``: several `serve` processes on one port (SO_REUSEPORT), and cache-aware
routing that still sends a prompt to one node whichever worker takes it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from blueprint.config import Settings, load_settings
from blueprint.errors import InvalidRequestError
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from blueprint.workers import check_workers, split_settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-workers-test-key"


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _config(path: Path, ports: list[int], workers: int) -> Path:
    nodes = "".join(f'[[nodes]]\nname = "emu-{i}"\nengine = "openai"\nmodel = "emu"\n'
                    f'base_url = "http://127.0.0.1:{port}/v1"\nmax_batch_size = 8\nmax_queue = 16\n\n'
                    for i, port in enumerate(ports))
    path.write_text(f'[server]\napi_keys = ["{KEY}"]\nworkers = {workers}\nrate_limit_per_minute = 6000\n\n'
                    f'[balancer]\nstrategy = "cache_aware"\n\n{nodes}')
    return path


def test_split_settings_divides_limits_and_hashes_prefixes(tmp_path: Path) -> None:
    settings = load_settings(str(_config(tmp_path / "op.toml", [1, 2], workers=2)))
    one = split_settings(settings, 2, 4321)
    assert [n.max_batch_size for n in one.nodes] == [4, 4] and one.nodes[0].max_queue == 8
    assert one.server.port == 4321 and one.server.rate_limit_per_minute == 3000
    assert one.balancer.cache_aware.placement == "prefix_hash"


def test_workers_refuse_in_process_engines() -> None:
    settings = Settings.model_validate({"server": {"workers": 2}, "nodes": [
        {"name": "t", "engine": "transformers", "model": "t", "path": "/models/t"}]})
    with pytest.raises(InvalidRequestError, match="remote"):
        check_workers(settings)


async def test_two_workers_share_the_port_and_agree_on_prefix_homes(tmp_path: Path) -> None:
    backends = [EmulatedBackend(EmulatedOptions(model="emu", prefill_s_per_token=0.0,
                                                decode_s_per_token=0.0005)) for _ in range(3)]
    ports = [await backend.start() for backend in backends]
    config = _config(tmp_path / "op.toml", ports, workers=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("API_KEYS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"READY "), line
        url = f"http://127.0.0.1:{int(line.split()[1])}/v1/chat/completions"
        prompts = [f"system prompt number {group}: " + "be brief and exact. " * 20 for group in range(6)]

        gate = asyncio.Semaphore(3)  # below every node's slots: placement decides, not a full node

        async def ask(prompt: str) -> int:
            # a fresh connection each time, so the kernel spreads requests over both workers
            headers = {"Authorization": f"Bearer {KEY}"}
            async with gate, httpx.AsyncClient(timeout=30, headers=headers) as client:
                response = await client.post(url, json={"model": "emu", "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": prompt}]})
                return response.status_code

        statuses = await asyncio.gather(*(ask(p) for p in prompts for _ in range(5)))
        assert statuses == [200] * 30
        landed = [backend.stats_dict()["distinct_prompts"] for backend in backends]
        assert sum(landed) == len(prompts), landed  # every prompt on exactly one node
        assert sum(1 for count in landed if count) >= 2  # and not all on one
        children = _children(proc.pid)
        assert len(children) == 2  # two worker processes behind the one port
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        for backend in backends:
            await backend.stop()
