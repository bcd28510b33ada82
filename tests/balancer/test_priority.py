"""Chain jobs (requests made inside ``chain_job``) before HTTP traffic: they wait instead of
being told "overloaded" or "no healthy node", go ahead of HTTP requests in the queue, may use the
reserved share of slots, and give up with OverloadedError when their deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from balancer_fakes import FakeClient, chat_request

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.balancer.priority import chain_job, job_deadline
from blueprint.errors import NoHealthyNodeError, OverloadedError
from blueprint.llm.config import NodeConfig
from blueprint.llm.types import ChatCompletion, ChatCompletionRequest


class OrderedClient(FakeClient):
    """Records the order in which requests reached the node (by their text)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.order: list[str] = []

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        self.order.append(str(request.messages[0].content))
        return await super().chat(request)


@contextlib.asynccontextmanager
async def one_node(limit: int = 1, queue: int = 1, **settings: object):
    client = OrderedClient("a", max_concurrency=limit)
    client.gate = asyncio.Event()
    config = NodeConfig(name="a", engine="openai", model="m", base_url="http://x/v1",
                        max_batch_size=limit, max_queue=queue)
    base = {"retry": {"backoff_base_s": 0.0, "backoff_max_s": 0.0}, "seed": 1, **settings}
    balancer = Balancer([client], BalancerSettings.model_validate(base), node_configs={"a": config})
    await balancer.start()
    try:
        yield balancer, client
    finally:
        client.gate.set()
        await balancer.close()


async def job(balancer: Balancer, text: str, patience: float = 5.0) -> str:
    with chain_job(time.monotonic() + patience):
        assert job_deadline() is not None
        answer = await balancer.chat(chat_request(text=text))
    assert job_deadline() is None
    return str(answer.choices[0].message.content)


async def test_a_full_queue_refuses_http_but_queues_jobs_first() -> None:
    async with one_node(limit=1, queue=1) as (balancer, client):
        running = asyncio.create_task(balancer.chat(chat_request(text="http-1")))
        queued = asyncio.create_task(balancer.chat(chat_request(text="http-2")))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await balancer.chat(chat_request(text="http-3"))
        jobs = [asyncio.create_task(job(balancer, f"job-{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in jobs)
        client.gate.set()
        await asyncio.gather(running, queued, *jobs)
        # the jobs overtook the HTTP request that was queued before them, keeping their own order
        assert client.order == ["http-1", "job-0", "job-1", "job-2", "http-2"]


async def test_a_job_waits_through_a_moment_with_no_healthy_node() -> None:
    async with one_node(limit=2) as (balancer, client):
        client.gate.set()
        node = balancer.node("a")
        node.breaker.trip("down for a moment")
        with pytest.raises(NoHealthyNodeError):
            await balancer.chat(chat_request(text="http"))
        waiting = asyncio.create_task(job(balancer, "job"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        node.breaker.record_success()  # back (a health round would find the same)
        await balancer.check_health()
        assert await asyncio.wait_for(waiting, 2) == "a"


async def test_a_job_gives_up_at_its_deadline() -> None:
    async with one_node(limit=1, queue=0) as (balancer, _client):
        busy = asyncio.create_task(balancer.chat(chat_request(text="http")))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(OverloadedError):
            await job(balancer, "late", patience=0.2)
        assert 0.15 <= time.monotonic() - started < 1.0
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy


async def test_reserved_share_keeps_slots_for_jobs() -> None:
    async with one_node(limit=4, queue=8, reserved_job_share=0.5) as (balancer, client):
        http = [asyncio.create_task(balancer.chat(chat_request(text=f"http-{i}"))) for i in range(3)]
        await asyncio.sleep(0.01)
        assert client.running == 2  # HTTP gets half the slots; the third waits
        jobs = [asyncio.create_task(job(balancer, f"job-{i}")) for i in range(2)]
        await asyncio.sleep(0.01)
        assert client.running == 4  # the jobs got the reserved ones at once
        client.gate.set()
        await asyncio.gather(*http, *jobs)
        assert client.order[:4] == ["http-0", "http-1", "job-0", "job-1"]
