"""The daemon in this process (``run_daemon``, what ``python -m blueprint run`` calls) on a fresh
anvil with the TNT Core state, a new service and the tiny model, with its HTTP API on a loopback
port: for tests that read in-process state (spans, collectors) while real jobs run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from blueprint.assembly import run_daemon
from blueprint.config import load_settings
from blueprint.devnet.anvil import DEV_KEYS, Anvil
from blueprint.devnet.setup import DevService, submit_job, wait_for_result
from blueprint.devnet.stack import chain_client, create_service, write_config
from blueprint.jobs.codec import encode_inputs
from blueprint.server.runner import free_port
from blueprint.tangle.events import JobResultLog
from tests.devnet_support import devnet_anvil


@dataclass
class InProcessDaemon:
    anvil: Anvil
    service: DevService
    base_url: str

    async def chat_job(self, content: str = "Hi", max_tokens: int = 5) -> tuple[int, JobResultLog]:
        """Submit one chat job from the service owner; its call id and result log."""
        async with chain_client(self.anvil) as client:
            call_id = await submit_job(client, self.service.owner, self.service.service_id, 0, encode_inputs(
                "tiny", max_tokens, {"messages": [{"role": "user", "content": content}], "temperature": 0}))
            result = await wait_for_result(client, self.service.service_id, call_id, 60,
                                           operator=self.service.operator.address)
        return call_id, result


@contextlib.asynccontextmanager
async def daemon_on_anvil(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[InProcessDaemon]:
    with devnet_anvil() as anvil:
        async with chain_client(anvil) as client:
            service = await create_service(client, DEV_KEYS[0], tmp_path / "keystore")
        port = free_port()
        config = write_config(tmp_path / "config.toml", [
            {"engine": "transformers", "model": "tiny", "path": str(tiny_model_dir), "device": "cpu",
             "max_batch_size": 2},
        ], server_port=port, jobs={"poll_interval_s": 0.2, "shutdown_timeout_s": 10})
        env = service.manager_env(keystore_uri=str(tmp_path / "keystore"), data_dir=str(tmp_path / "data"),
                                  ws_rpc_url=anvil.ws_url)
        settings = load_settings(config, **{key.lower(): value for key, value in env.items()})
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(settings, stop=stop, install_signals=False))
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                deadline = time.monotonic() + 60
                while True:
                    assert not daemon.done(), daemon.exception()
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/ready")).status_code == 200:
                            break
                    assert time.monotonic() < deadline, "daemon API not up"
                    await asyncio.sleep(0.1)
            yield InProcessDaemon(anvil, service, base)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 60)
