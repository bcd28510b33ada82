"""End to end on anvil with the real TNT Core state: the daemon as the blueprint manager runs it.

One anvil, one fresh service and one daemon subprocess (``python -m blueprint run`` with the
manager's environment variables and a TOML config declaring a transformers node on the tiny
model) are shared by the module; the tests run in order and the restart test restarts it.
Results are read back from ``JobResultSubmitted`` logs and decoded.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from blueprint.devnet.anvil import Anvil
from blueprint.devnet.setup import DevService, submit_job, wait_for_result
from blueprint.devnet.stack import DaemonProcess, chain_client, write_config
from blueprint.jobs.codec import decode_result_json, encode_inputs
from tests.devnet_support import devnet_anvil, new_service, running_daemon

pytestmark = [pytest.mark.chain, pytest.mark.slow]

MODEL = "tiny"
CHAT = {"messages": [{"role": "user", "content": "Hello!"}], "temperature": 0}


@dataclass
class Stack:
    anvil: Anvil
    service: DevService
    daemon: DaemonProcess
    data_dir: Path
    call_ids: list[int] = field(default_factory=list)  # every job this module submitted


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    with devnet_anvil() as anvil:
        work = tmp_path_factory.mktemp("e2e")
        service = new_service(anvil, work / "keystore")
        config = write_config(work / "config.toml", [
            {"engine": "transformers", "model": MODEL, "path": str(tiny_model_dir), "device": "cpu",
             "max_batch_size": 4},
        ], jobs={"poll_interval_s": 0.2, "shutdown_timeout_s": 20})
        env = service.manager_env(keystore_uri=str(work / "keystore"), data_dir=str(work / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env["BLUEPRINT_CONFIG"] = str(config)
        with running_daemon(env, work / "daemon.log") as daemon:
            yield Stack(anvil, service, daemon, work / "data")


async def _submit_and_wait(stack: Stack, jobs: list[tuple[int, bytes]], wait_s: float = 60) -> list[dict]:
    async with chain_client(stack.anvil) as client:
        call_ids = [await submit_job(client, stack.service.owner, stack.service.service_id, job, inputs)
                    for job, inputs in jobs]
        stack.call_ids += call_ids
        results = await asyncio.gather(*(
            wait_for_result(client, stack.service.service_id, cid, wait_s,
                            operator=stack.service.operator.address)
            for cid in call_ids))
    return [decode_result_json(r.output) for r in results]


async def _all_results(stack: Stack) -> Counter[int]:
    async with chain_client(stack.anvil) as client:
        logs = await client.result_logs(stack.service.service_id, operator=stack.service.operator.address)
    return Counter(entry.call_id for entry in logs)


async def test_three_job_kinds(stack: Stack) -> None:
    chat, completion, embedding = await _submit_and_wait(stack, [
        (0, encode_inputs(MODEL, 8, CHAT)),
        (1, encode_inputs(MODEL, 6, {"prompt": "The operator"})),
        (2, encode_inputs(MODEL, 0, {"input": ["hello", "world"]})),
    ])
    assert chat["object"] == "chat.completion" and chat["model"] == MODEL
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= chat["usage"]["completion_tokens"] <= 8
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] <= 6
    assert [d["index"] for d in embedding["data"]] == [0, 1]
    assert all(isinstance(x, float) for x in embedding["data"][0]["embedding"])


async def test_malformed_inputs_get_an_error_and_the_next_job_is_answered(stack: Stack) -> None:
    bad_abi, bad_model, over_ceiling, good = await _submit_and_wait(stack, [
        (0, b"\x00\x01 definitely not abi"),
        (1, encode_inputs("no-such-model", 4, {"prompt": "x"})),
        (0, encode_inputs(MODEL, 4, {**CHAT, "max_tokens": 5})),
        (1, encode_inputs(MODEL, 3, {"prompt": "still here"})),
    ])
    assert bad_abi["error"]["code"] == "malformed_inputs"
    assert bad_model["error"]["code"] == "model_not_found"
    assert over_ceiling["object"] == "chat.completion"  # clamped to the paid 4, not refused
    assert over_ceiling["usage"]["completion_tokens"] <= 4
    assert good["object"] == "text_completion"


async def test_restart_loses_nothing_and_answers_nothing_twice(stack: Stack) -> None:
    assert stack.daemon.stop() == 0  # SIGTERM: graceful, exit 0
    async with chain_client(stack.anvil) as client:  # jobs submitted while the daemon is down
        down = [await submit_job(client, stack.service.owner, stack.service.service_id, 1,
                                 encode_inputs(MODEL, 3, {"prompt": f"while down {i}"})) for i in range(2)]
    stack.call_ids += down
    stack.daemon.start()
    stack.daemon.wait_ready()
    (after,) = await _submit_and_wait(stack, [(2, encode_inputs(MODEL, 0, {"input": "after restart"}))])
    assert after["object"] == "list"
    async with chain_client(stack.anvil) as client:
        for cid in down:
            result = await wait_for_result(client, stack.service.service_id, cid, 60,
                                           operator=stack.service.operator.address)
            assert decode_result_json(result.output)["object"] == "text_completion"
    counts = await _all_results(stack)
    assert counts == Counter(stack.call_ids) and set(counts.values()) == {1}, counts  # once each
    with sqlite3.connect(stack.data_dir / "ledger.sqlite3") as db:
        states = Counter(state for (state,) in db.execute("SELECT state FROM jobs"))
    assert states == {"confirmed": len(stack.call_ids)}, states


def test_run_without_service_id_explains_registration(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HTTP_RPC_URL": "http://127.0.0.1:9", "DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "blueprint", "run"], env=env, capture_output=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and b"register" in proc.stderr


def test_dev_smoke(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The README's first command, in its CI form: the whole stack up (two operators), four jobs, exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "blueprint", "dev", "--smoke", "--dir", str(tmp_path / "dev"),
         "--model", str(tiny_model_dir), "--model-id", "tiny", "--device", "cpu", "--timeout", "90"],
        capture_output=True, timeout=200, cwd=Path(__file__).resolve().parents[2], text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all 4 results arrived, none is an error" in proc.stdout
    for title in ("job 0: chat completion", "job 1: text completion", "job 2: embeddings", "only B offers"):
        assert title in proc.stdout
    assert "answered by operator B" in proc.stdout  # tiny-b is B's alone
