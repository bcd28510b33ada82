"""The Balancer facade with in-memory clients: routing, errors, admission, streams, scale-out."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from balancer_fakes import FakeClient, chat_request

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.errors import (
    BackendError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyNodeError,
    OverloadedError,
    StreamInterruptedError,
)
from blueprint.llm.config import NodeConfig


def fast_settings(**extra: object) -> BalancerSettings:
    base = {"retry": {"backoff_base_s": 0.0, "backoff_max_s": 0.0}, "seed": 7}
    base.update(extra)
    return BalancerSettings.model_validate(base)


@contextlib.asynccontextmanager
async def running(clients, settings=None, **kw):
    balancer = Balancer(clients, settings or fast_settings(), **kw)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.close()


async def test_round_robin_and_least_loaded_spread_requests() -> None:
    for strategy in ("round_robin", "least_loaded"):
        clients = [FakeClient(f"n{i}") for i in range(3)]
        async with running(clients, fast_settings(strategy=strategy)) as balancer:
            answers = [(await balancer.chat(chat_request())).choices[0].message.content for _ in range(9)]
        assert sorted(answers) == sorted(["n0", "n1", "n2"] * 3), strategy
        assert all(c.started and c.closed for c in clients)


async def test_model_errors() -> None:
    client = FakeClient("a", models=("m",))
    async with running([client]) as balancer:
        with pytest.raises(ModelNotFoundError):
            await balancer.chat(chat_request(model="other"))
        with pytest.raises(ModelNotFoundError):
            balancer.model_info("other")
        assert balancer.model_info("m").is_ready is True
        balancer.node("a").breaker.trip("down")
        with pytest.raises(NoHealthyNodeError):
            await balancer.chat(chat_request())
        assert balancer.model_info("m").is_ready is False
        assert [m.id for m in balancer.models()] == ["m"]


async def test_models_union_one_entry_per_id() -> None:
    async with running([FakeClient("a", models=("x", "y")), FakeClient("b", models=("y", "z"))]) as b:
        assert sorted(m.id for m in b.models()) == ["x", "y", "z"]


async def test_retry_on_other_node_before_first_token() -> None:
    bad = FakeClient("a", fail=10)
    good = FakeClient("b")
    async with running([bad, good], fast_settings(strategy="round_robin")) as balancer:
        for _ in range(4):
            answer = await balancer.chat(chat_request())
            assert answer.choices[0].message.content == "b"
        assert balancer.node("a").errors_total >= 1


async def test_non_retryable_error_surfaces_at_once() -> None:
    bad = FakeClient("a", fail=1, fail_with=InvalidRequestError)
    good = FakeClient("b")
    async with running([bad, good], fast_settings(strategy="round_robin")) as balancer:
        with pytest.raises(InvalidRequestError):
            await balancer.chat(chat_request())
        assert good.calls == 0
        assert balancer.node("a").breaker.state.value == "closed"


async def test_all_attempts_fail_reports_backend_error() -> None:
    clients = [FakeClient("a", fail=10), FakeClient("b", fail=10)]
    async with running(clients) as balancer:
        with pytest.raises(BackendError):
            await balancer.chat(chat_request())
        assert clients[0].calls == 1 and clients[1].calls == 1  # each node tried once


async def test_stream_retries_before_first_chunk_and_interrupts_after() -> None:
    clients = [FakeClient("a", fail=1), FakeClient("b")]
    async with running(clients, fast_settings(strategy="round_robin")) as balancer:
        chunks = [c.choices[0].delta.content async for c in balancer.chat_stream(chat_request())]
        assert chunks == ["b:0", "b:1", "b:2"]

    dying = [FakeClient("a", fail_after_chunks=1), FakeClient("b", fail_after_chunks=1)]
    async with running(dying) as balancer:
        got = []
        with pytest.raises(StreamInterruptedError):
            async for chunk in balancer.chat_stream(chat_request()):
                got.append(chunk)
        assert len(got) == 1  # what was sent stays sent; no retry after the first chunk
        assert sum(c.calls for c in dying) == 1


async def test_admission_queue_then_overloaded_at_once() -> None:
    client = FakeClient("a")
    client.gate = asyncio.Event()
    config = NodeConfig(name="a", model="m", max_batch_size=2, max_queue=3)
    async with running([client], node_configs={"a": config}) as balancer:
        tasks = [asyncio.create_task(balancer.chat(chat_request())) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert client.running == 2  # the concurrency limit
        assert balancer.describe()["models"]["m"]["queued"] == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OverloadedError) as caught:
            await balancer.chat(chat_request())
        assert loop.time() - started < 0.05  # at once, no waiting
        assert caught.value.retry_after > 0
        client.gate.set()
        results = await asyncio.gather(*tasks)
        assert len(results) == 5 and client.peak == 2


async def test_queue_is_fifo() -> None:
    client = FakeClient("a")
    client.gate = asyncio.Event()
    config = NodeConfig(name="a", model="m", max_batch_size=1, max_queue=10)
    order: list[int] = []
    async with running([client], node_configs={"a": config}) as balancer:
        async def one(i: int) -> None:
            await balancer.chat(chat_request())
            order.append(i)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.005)
        client.gate.set()
        await asyncio.gather(*tasks)
    assert order == list(range(6))


async def test_cancelled_waiter_leaves_queue() -> None:
    client = FakeClient("a")
    client.gate = asyncio.Event()
    config = NodeConfig(name="a", model="m", max_batch_size=1, max_queue=1)
    async with running([client], node_configs={"a": config}) as balancer:
        first = asyncio.create_task(balancer.chat(chat_request()))
        waiting = asyncio.create_task(balancer.chat(chat_request()))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert balancer.describe()["models"]["m"]["queued"] == 0
        client.gate.set()
        await first
        assert balancer.node("a").in_flight == 0


@pytest.mark.parametrize("how", ["aclose", "break", "cancel"])
async def test_stream_consumer_leaving_frees_slot(how: str) -> None:
    client = FakeClient("a", chunks=1000, delay=0.001)
    config = NodeConfig(name="a", model="m", max_batch_size=1, max_queue=0)
    async with running([client], node_configs={"a": config}) as balancer:
        stream = balancer.chat_stream(chat_request())
        if how == "cancel":
            async def consume() -> None:
                async for _ in stream:
                    pass
            task = asyncio.create_task(consume())
            await asyncio.sleep(0.02)
            assert balancer.node("a").in_flight == 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            async for _ in stream:
                assert balancer.node("a").in_flight == 1
                break
            if how == "aclose":
                await stream.aclose()
            else:
                del stream
                await asyncio.sleep(0)  # the loop's async-generator finaliser runs aclose
        for _ in range(10):
            if balancer.node("a").in_flight == 0:
                break
            await asyncio.sleep(0)
        assert balancer.node("a").in_flight == 0
        assert client.running == 0
        # The slot is usable again (max_queue=0: a leaked slot would give OverloadedError).
        assert (await balancer.chat(chat_request())).choices[0].message.content == "a"


async def test_add_drain_remove_while_running() -> None:
    a = FakeClient("a")
    async with running([a], fast_settings(strategy="round_robin")) as balancer:
        b = FakeClient("b")
        await balancer.add_node(b, NodeConfig(name="b", model="m"))
        assert b.started
        names = {(await balancer.chat(chat_request())).choices[0].message.content for _ in range(4)}
        assert names == {"a", "b"}
        with pytest.raises(InvalidRequestError):
            await balancer.add_node(FakeClient("b"))

        a.delay = b.delay = 0.1
        slow = asyncio.create_task(balancer.chat(chat_request()))
        await asyncio.sleep(0.01)
        busy = "a" if balancer.node("a").in_flight else "b"
        await balancer.remove_node(busy)
        assert slow.done() and (await slow).choices[0].message.content == busy  # in-flight finished
        assert busy not in {n.name for n in balancer.nodes()}
        other = {"a": "b", "b": "a"}[busy]
        assert (await balancer.chat(chat_request())).choices[0].message.content == other
        await balancer.drain_node(other)
        with pytest.raises(NoHealthyNodeError):
            await balancer.chat(chat_request())
        described = balancer.describe()
        assert described["nodes"][0]["draining"] is True


async def test_failing_nodes_open_breaker_and_leave_selection() -> None:
    settings = fast_settings(health={"failure_threshold": 2, "open_base_s": 60})
    bad = FakeClient("a", fail=100)
    good = FakeClient("b")
    async with running([bad, good], settings) as balancer:
        for _ in range(6):
            await balancer.chat(chat_request())
        assert balancer.node("a").breaker.state.value == "open"
        assert bad.calls == 2
        assert good.calls == 6


async def test_backend_metrics_are_merged() -> None:
    from blueprint.llm.client import NodeMetrics

    class Reporting(FakeClient):
        async def refresh_backend_metrics(self) -> NodeMetrics:
            return NodeMetrics(in_flight=5, queued=7, kv_cache_usage=0.5)

    async with running([Reporting("a")]) as balancer:
        await balancer.refresh_metrics()
        node = balancer.node("a")
        assert node.metrics().queued == 7 and node.metrics().kv_cache_usage == 0.5
        assert node.view("m").load == 12
