"""One trace per chain job, seen by an in-memory exporter: the daemon (``run_daemon``, what
``python -m blueprint run`` calls) on anvil with the TNT Core state and the tiny model answers
one chat job; its trace has the job span at the root, the handler with admission, routing and
the GenAI generation span under it, the result encoding, and the transaction's send and
confirmation drawn from the ledger's timestamps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind

from blueprint.jobs.codec import decode_result_json
from tests.inprocess_daemon import daemon_on_anvil
from tests.tracing.conftest import Spans

pytestmark = [pytest.mark.chain, pytest.mark.slow]


async def test_chain_job_is_one_trace(tmp_path: Path, tiny_model_dir: Path, spans: Spans) -> None:
    async with daemon_on_anvil(tmp_path, tiny_model_dir) as daemon:
        call_id, result = await daemon.chat_job()
        assert decode_result_json(result.output)["object"] == "chat.completion"
        deadline = time.monotonic() + 10  # the job span ends once the daemon read the fate back
        while not [s for s in spans.named("tangle.job") if s.attributes["tangle.call_id"] == call_id]:
            assert time.monotonic() < deadline, [s.name for s in spans.all()]
            await asyncio.sleep(0.05)
        service_id = daemon.service.service_id

    root = next(s for s in spans.named("tangle.job") if s.attributes["tangle.call_id"] == call_id)
    assert root.parent is None and root.kind is SpanKind.CONSUMER
    assert root.attributes["tangle.service_id"] == service_id
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
