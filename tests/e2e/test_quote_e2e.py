"""End to end on anvil with the real TNT Core state: the daemon (``python -m blueprint run`` as
the blueprint manager starts it) signs a quote on its HTTP API, the user pays it with
``submitJobFromQuote``, the daemon answers the ``JobSubmittedFromQuote`` job, and meanwhile it
keeps the operator online in the OperatorStatusRegistry with heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blueprint.client import BlueprintClient
from blueprint.commands.submit import fetch_quote
from blueprint.devnet.anvil import Anvil
from blueprint.devnet.setup import DevService
from blueprint.devnet.stack import DaemonProcess, chain_client
from blueprint.jobs.codec import encode_inputs
from tests.devnet_support import devnet_anvil, new_service, running_daemon

pytestmark = [pytest.mark.chain, pytest.mark.slow]

MODEL = "tiny"
PROMPT_WEI, COMPLETION_WEI = 1_000, 3_000
CHAT = {"messages": [{"role": "user", "content": "Quote me, then answer."}], "temperature": 0}


@dataclass
class Stack:
    anvil: Anvil
    service: DevService
    daemon: DaemonProcess
    http_url: str


def _config(path: Path, model_dir: Path) -> Path:
    path.write_text("\n".join([
        "[[nodes]]",
        'engine = "transformers"',
        f"model = {json.dumps(MODEL)}",
        f"path = {json.dumps(str(model_dir))}",
        'device = "cpu"',
        "max_batch_size = 2",
        f"options = {{ price_per_prompt_token_wei = {PROMPT_WEI}, "
        f"price_per_completion_token_wei = {COMPLETION_WEI} }}",
        "",
        "[server]",
        "port = 0",
        "",
        "[jobs]",
        "poll_interval_s = 0.2",
        "shutdown_timeout_s = 10",
        "",
    ]))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    with devnet_anvil() as anvil:
        work = tmp_path_factory.mktemp("quote-e2e")
        service = new_service(anvil, work / "keystore")
        env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"))
        env["BLUEPRINT_CONFIG"] = str(_config(work / "config.toml", tiny_model_dir))
        with running_daemon(env, work / "daemon.log") as daemon:
            ready = next(line for line in daemon.log_lines() if line.get("event") == "daemon.ready")
            yield Stack(anvil, service, daemon, ready["http"])


async def test_daemon_answers_a_job_paid_by_its_own_quote(stack: Stack) -> None:
    owner = stack.service.owner.account
    quote = await fetch_quote(stack.http_url, job_index=0, model=MODEL, max_tokens=8, request=CHAT,
                              requester=owner.address, timeout=30)
    assert quote.operator == stack.service.operator.address
    assert quote.details.price > 8 * COMPLETION_WEI  # the prompt is priced too
    async with chain_client(stack.anvil) as client:
        bp = BlueprintClient(client, stack.service.service_id)
        call_id = await bp.submit(owner, 0, MODEL, 8, CHAT, quote=quote, inputs=encode_inputs(MODEL, 8, CHAT))
        job = await client.get_job_call(stack.service.service_id, call_id)
        assert job.is_rfq and job.payment == quote.details.price
        answer = await bp.wait_for_result(call_id, timeout=60)
    assert answer["object"] == "chat.completion", answer
    assert 1 <= answer["usage"]["completion_tokens"] <= 8


async def test_daemon_keeps_the_operator_online(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while not any(line.get("event") == "heartbeat.sent" for line in stack.daemon.log_lines()):
        assert time.monotonic() < deadline, stack.daemon.tail()
        await asyncio.sleep(0.2)
    async with chain_client(stack.anvil) as client:
        registry = client.status_registry.functions
        operator = stack.service.operator.address
        state = await registry.getOperatorState(stack.service.service_id, operator).call()
        assert state[1] >= 1 and state[3] == 0  # beats counted, Healthy
        assert await registry.isHeartbeatCurrent(stack.service.service_id, operator).call()
    assert not any(line.get("event") == "heartbeat.failed" for line in stack.daemon.log_lines())
