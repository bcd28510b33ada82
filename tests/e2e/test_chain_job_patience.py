"""Transient trouble is never a final answer: a burst of jobs far beyond what the node takes at
once is answered in full once it drains (no "overloaded" result), while a job for a model nobody
serves still gets its error result at once. One operator, no service manager, one emulated
backend that runs one request at a time with no queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from blueprint.devnet.setup import submit_jobs, wait_for_result
from blueprint.devnet.stack import chain_client, write_config
from blueprint.jobs.codec import decode_result_json, encode_inputs
from tests.devnet_support import DaemonStack, devnet_anvil, new_service, running_daemon
from tests.reliability.reliability_support import BackendProcess

pytestmark = [pytest.mark.chain, pytest.mark.slow]

BURST = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonStack]:
    work = tmp_path_factory.mktemp("patience")
    backend = BackendProcess("--decode-s-per-token", "0.02", model="m").start()
    try:
        with devnet_anvil() as anvil:
            service = new_service(anvil, work / "keystore")
            config = write_config(work / "config.toml", [
                {"name": "only", "engine": "openai", "model": "m", "base_url": backend.base_url,
                 "max_batch_size": 1, "max_queue": 0},
            ], jobs={"poll_interval_s": 0.2, "shutdown_timeout_s": 5})
            env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"),
                                      ws_rpc_url=anvil.ws_url)
            env["BLUEPRINT_CONFIG"] = str(config)
            with running_daemon(env, work / "daemon.log", stop_timeout=20) as daemon:
                yield DaemonStack(anvil, service, daemon)
    finally:
        backend.stop()


async def test_a_burst_beyond_capacity_is_answered_in_full(stack: DaemonStack) -> None:
    sid = stack.service.service_id
    jobs = [(0, encode_inputs("m", 8, {"messages": [{"role": "user", "content": f"job {i}"}]}))
            for i in range(BURST)]
    jobs.append((0, encode_inputs("nope", 8, {"messages": [{"role": "user", "content": "?"}]})))
    async with chain_client(stack.anvil) as client:
        started = time.monotonic()
        calls = await submit_jobs(client, stack.service.owner, sid, jobs)

        async def one(call_id: int) -> tuple[dict, float]:
            found = await wait_for_result(client, sid, call_id, 90, poll_interval=0.1)
            return decode_result_json(found.output), time.monotonic() - started

        answers = await asyncio.gather(*(one(c) for c in calls))
    burst, (unknown, unknown_at) = answers[:-1], answers[-1]
    assert all("error" not in result for result, _ in burst), [r for r, _ in burst if "error" in r]
    assert unknown["error"]["code"] == "model_not_found"
    # the permanent error did not wait for the burst to drain
    assert unknown_at < max(at for _, at in burst)
    waits = [line for line in stack.daemon.log_lines() if line.get("event") == "daemon.job_answered"]
    assert not any(line.get("error_code") == "overloaded" for line in waits)
