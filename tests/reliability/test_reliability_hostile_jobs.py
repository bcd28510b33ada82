"""Hostile on-chain jobs against the real daemon on anvil (issue 11, row 1): one job must never
take the operator down, and never into a crash loop.

* A chat job whose request JSON is nested 85,000 deep: the standard library's parser overflows
  the C stack (web3 raises the recursion limit), which crashed the daemon on every restart. It
  must get an error result, and the daemon must answer the next job.
* A job that kills the process while its handler runs (an engine that segfaults on it) crashes
  the daemon; restarted, the daemon runs it once more and crashes again; the next start answers
  it with an error (the ledger's poison-job guard) and then serves the next job.

The node is a zero-cost engine (``tests/reliability/crashing_engine.py``), so the jobs cost chain
time only. One anvil, service and daemon for the module; the tests run in file order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from crashing_engine import CRASH_MARKER

from blueprint.devnet.setup import submit_job, wait_for_result
from blueprint.devnet.stack import DaemonProcess, chain_client, write_config
from blueprint.jobs.codec import decode_result_json, encode_inputs
from tests.devnet_support import DaemonStack, devnet_anvil, new_service, running_daemon

pytestmark = [pytest.mark.chain, pytest.mark.slow]

MODEL = "echo"
#: Deep enough to overflow the C stack under web3's recursion limit (about 70,000 does), small
#: enough for the set-up tools' 3M-gas simulation of ``submitJob`` (only the opening brackets:
#: the standard parser recurses before it finds the document unterminated).
DEPTH = 85_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonStack]:
    with devnet_anvil() as anvil:
        work = tmp_path_factory.mktemp("hostile-jobs")
        service = new_service(anvil, work / "keystore")
        config = write_config(work / "config.toml", [
            {"engine": "tests.reliability.crashing_engine:CrashingEcho", "model": MODEL},
        ], server_enabled=False, jobs={"poll_interval_s": 0.2, "shutdown_timeout_s": 5})
        env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env["BLUEPRINT_CONFIG"] = str(config)
        with running_daemon(env, work / "daemon.log", stop_timeout=15) as daemon:
            yield DaemonStack(anvil, service, daemon)


async def _submit(stack: DaemonStack, job_index: int, inputs: bytes) -> int:
    async with chain_client(stack.anvil) as client:
        return await submit_job(client, stack.service.owner, stack.service.service_id, job_index, inputs)


async def _result(stack: DaemonStack, call_id: int, wait_s: float = 30) -> dict:
    async with chain_client(stack.anvil) as client:
        found = await wait_for_result(client, stack.service.service_id, call_id, wait_s,
                                      operator=stack.service.operator.address)
    return decode_result_json(found.output)


def _exit_code_within(daemon: DaemonProcess, seconds: float) -> int | None:
    assert daemon.process is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = daemon.process.poll()
        if code is not None:
            return code
        time.sleep(0.1)
    return None


def _restart(daemon: DaemonProcess) -> None:
    daemon.stop(timeout=5)
    daemon.start()


async def test_deeply_nested_request_gets_an_error_and_the_daemon_stays_up(stack: DaemonStack) -> None:
    request = '{"messages":' + "[" * DEPTH
    deep = await _submit(stack, 0, encode_inputs(MODEL, 8, request))
    answer = await _result(stack, deep)
    assert answer["error"]["code"] == "invalid_json", answer
    assert stack.daemon.process is not None and stack.daemon.process.poll() is None
    after = await _submit(stack, 1, encode_inputs(MODEL, 3, {"prompt": "after the deep one"}))
    assert (await _result(stack, after))["object"] == "text_completion"


async def test_a_job_that_crashes_the_daemon_twice_is_answered_with_an_error(stack: DaemonStack) -> None:
    daemon = stack.daemon
    poison = await _submit(stack, 1, encode_inputs(MODEL, 3, {"prompt": f"{CRASH_MARKER} please"}))
    assert await asyncio.to_thread(_exit_code_within, daemon, 30) is not None, "the engine did not crash"
    _restart(daemon)  # the ledger says the job is owed: it runs once more and crashes again
    assert await asyncio.to_thread(_exit_code_within, daemon, 60) is not None, "no second crash"
    _restart(daemon)
    answer = await _result(stack, poison, wait_s=60)
    assert answer["error"]["code"] == "job_crashed", answer
    after = await _submit(stack, 1, encode_inputs(MODEL, 3, {"prompt": "the next job"}))
    assert (await _result(stack, after))["object"] == "text_completion"
    assert daemon.process is not None and daemon.process.poll() is None
