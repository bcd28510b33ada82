"""The generic runner on its own: real asyncio parts (queues, events), no chain, no ledger."""

from __future__ import annotations

import asyncio

import pytest

from blueprint.runner import Backlog, Runner


class QueueProducer:
    def __init__(self, items: list[int]) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        for item in items:
            self.queue.put_nowait(item)
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("producer.start")

    async def get(self) -> int:
        return await self.queue.get()

    async def stop(self) -> None:
        self.events.append("producer.stop")


class ListConsumer:
    def __init__(self, events: list[str]) -> None:
        self.results: list[str] = []
        self.events = events

    async def start(self) -> None:
        self.events.append("consumer.start")

    async def submit(self, result: str) -> None:
        self.results.append(result)

    async def close(self, grace: float) -> None:
        self.events.append("consumer.close")


class Service:
    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.name, self.events, self.fail = name, events, fail

    async def start(self) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.events.append(f"{self.name}.start")

    async def stop(self) -> None:
        self.events.append(f"{self.name}.stop")


async def _until(predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls plain counters the parts keep
            await asyncio.sleep(0.005)


async def test_routes_every_call_to_the_consumer_within_the_concurrency_bound() -> None:
    producer = QueueProducer(list(range(20)))
    consumer = ListConsumer(producer.events)
    running = peak = 0

    async def route(call: int) -> str | None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return None if call == 13 else f"r{call}"  # 13 left our hands: nothing to submit

    runner = Runner(producer, route, consumer, max_concurrent=4)
    task = asyncio.create_task(runner.run())
    await _until(lambda: runner.jobs_done == 20)
    runner.request_stop()
    await task
    assert sorted(consumer.results) == sorted(f"r{i}" for i in range(20) if i != 13)
    assert peak == 4


async def test_order_of_start_and_stop_and_the_backlog_first() -> None:
    producer = QueueProducer([1])
    events = producer.events
    consumer = ListConsumer(events)
    seen: list[int] = []

    async def route(call: int) -> str:
        seen.append(call)
        return f"r{call}"

    async def backlog() -> Backlog[int, str]:
        events.append("backlog")
        return Backlog(rerun=[7], resend=["stored"])

    runner = Runner(producer, route, consumer, services=[Service("api", events), Service("beat", events)],
                    backlog=backlog, on_ready=lambda: events.append("ready"))
    task = asyncio.create_task(runner.run())
    await _until(lambda: len(consumer.results) == 3)
    runner.request_stop()
    await task
    assert events == ["consumer.start", "api.start", "beat.start", "ready", "backlog", "producer.start",
                      "producer.stop", "consumer.close", "beat.stop", "api.stop"]
    assert seen[0] == 7 and set(consumer.results) == {"stored", "r7", "r1"}


async def test_stop_drains_running_jobs_and_cancels_past_the_bound() -> None:
    producer = QueueProducer([1, 2])
    consumer = ListConsumer(producer.events)
    started = asyncio.Event()

    async def route(call: int) -> str:
        started.set()
        await asyncio.sleep(0.05 if call == 1 else 60)  # job 2 never finishes in time
        return f"r{call}"

    runner = Runner(producer, route, consumer, shutdown_timeout_s=0.3)
    task = asyncio.create_task(runner.run())
    await started.wait()
    await asyncio.sleep(0.01)
    runner.request_stop()
    async with asyncio.timeout(5):
        await task
    assert consumer.results == ["r1"]  # finished within the bound; the other was cancelled


async def test_a_failing_job_is_reported_and_the_others_go_on() -> None:
    producer = QueueProducer([1, 2, 3])
    consumer = ListConsumer(producer.events)
    errors: list[BaseException] = []

    async def route(call: int) -> str:
        if call == 2:
            raise OSError("ledger unavailable")
        return f"r{call}"

    runner = Runner(producer, route, consumer, on_error=errors.append)
    task = asyncio.create_task(runner.run())
    await _until(lambda: runner.jobs_done == 3)
    runner.request_stop()
    await task
    assert sorted(consumer.results) == ["r1", "r3"]
    assert [str(e) for e in errors] == ["ledger unavailable"]


async def test_a_service_that_cannot_start_stops_what_already_started() -> None:
    producer = QueueProducer([])
    events = producer.events
    consumer = ListConsumer(events)

    async def route(call: int) -> str:
        return str(call)

    services = [Service("api", events), Service("beat", events, fail=True)]
    runner = Runner(producer, route, consumer, services=services)
    with pytest.raises(RuntimeError, match="beat cannot start"):
        await runner.run()
    assert events == ["consumer.start", "api.start", "consumer.close", "api.stop"]


async def test_admission_waits_without_holding_a_slot_and_may_drop() -> None:
    """A call waiting its turn in ``admit`` (a stand-by operator) holds no routing slot, so the
    calls behind it run; a call admit drops is never routed."""
    producer = QueueProducer([1, 2, 3, 4])
    consumer = ListConsumer(producer.events)
    turn = asyncio.Event()

    async def admit(call: int) -> int | None:
        if call == 1:
            await turn.wait()  # stands by until the others are done
        return None if call == 3 else call * 10

    async def route(call: int) -> str:
        return f"r{call}"

    runner = Runner(producer, route, consumer, admit=admit, max_concurrent=1)
    task = asyncio.create_task(runner.run())
    await _until(lambda: sorted(consumer.results) == ["r20", "r40"])
    turn.set()
    await _until(lambda: runner.jobs_done == 4)
    runner.request_stop()
    await task
    assert sorted(consumer.results) == ["r10", "r20", "r40"]
