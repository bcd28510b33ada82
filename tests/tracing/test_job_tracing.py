"""One trace per chain job, seen by an in-memory exporter: the daemon (``run_daemon``, what
``python -m blueprint run`` calls) on anvil with the TNT Core state and the tiny model answers
one chat job; its trace has the job span at the root, the handler with admission, routing and
the GenAI generation span under it, the result encoding, and the transaction's send and
confirmation drawn from the ledger's timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.trace import SpanKind

from blueprint.config import load_settings
from blueprint.daemon import run_daemon
from blueprint.devstack import chain_client, create_service, write_config
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.server.runner import free_port
from blueprint.tangle.devnet import DEV_KEYS
from blueprint.tangle.setup import submit_job, wait_for_result
from tests.devnet_support import devnet_anvil
from tests.tracing.conftest import Spans

pytestmark = [pytest.mark.chain, pytest.mark.slow]


async def test_chain_job_is_one_trace(tmp_path: Path, tiny_model_dir: Path, spans: Spans) -> None:
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
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                deadline = time.monotonic() + 60
                while True:
                    assert not daemon.done(), daemon.exception()
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/ready")).status_code == 200:
                            break
                    assert time.monotonic() < deadline, "daemon API not up"
                    await asyncio.sleep(0.1)
            async with chain_client(anvil) as client:
                call_id = await submit_job(client, service.owner, service.service_id, 0, encode_inputs(
                    "tiny", 5, {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}))
                result = await wait_for_result(client, service.service_id, call_id, 60,
                                               operator=service.operator.address)
            assert decode_result_json(result.output)["object"] == "chat.completion"
            deadline = time.monotonic() + 10  # the job span ends once the daemon read the fate back
            while not [s for s in spans.named("tangle.job") if s.attributes["tangle.call_id"] == call_id]:
                assert time.monotonic() < deadline, [s.name for s in spans.all()]
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 60)

    root = next(s for s in spans.named("tangle.job") if s.attributes["tangle.call_id"] == call_id)
    assert root.parent is None and root.kind is SpanKind.CONSUMER
    assert root.attributes["tangle.service_id"] == service.service_id
    assert root.attributes["tangle.job_index"] == 0
    trace = [s for s in spans.all() if s.context.trace_id == root.context.trace_id]

    handle = spans.child(root, "tangle.job.handle")
    admission = spans.child(handle, "balancer.admission")
    route = spans.child(admission, "balancer.route")
    assert route.attributes["blueprint.node"] == "transformers:tiny"
    assert route.attributes["blueprint.route.reason"]
    generation = spans.child(handle, "chat tiny")
    assert generation.kind is SpanKind.CLIENT
    attrs = generation.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "tiny"
    assert attrs["gen_ai.provider.name"] == "transformers"
    assert attrs["gen_ai.request.max_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] >= 1 and attrs["gen_ai.usage.input_tokens"] >= 1
    assert attrs["gen_ai.response.finish_reasons"]

    encode = spans.child(root, "tangle.job.encode_result")
    assert handle.end_time <= encode.start_time
    send = spans.child(root, "tangle.tx.send")
    confirm = spans.child(root, "tangle.tx.confirm")
    assert send.attributes["tangle.tx.hash"] == confirm.attributes["tangle.tx.hash"] == result.tx_hash
    assert confirm.attributes["tangle.tx.status"] == "confirmed"
    assert encode.end_time <= send.end_time <= confirm.end_time <= root.end_time
    assert {s.name for s in trace} >= {"tangle.job", "tangle.job.handle", "balancer.admission",
                                       "balancer.route", "chat tiny", "tangle.job.encode_result",
                                       "tangle.tx.send", "tangle.tx.confirm"}
