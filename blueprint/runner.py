"""The generic job runner: producer -> router -> consumer under a semaphore, with background
services, and a bounded drain on stop.

Shaped like blueprint-sdk's runner builder (a producer stream, a router, a consumer sink and
background services, assembled once) and arq's ``Worker`` (a short main loop: take a job, start
it under a semaphore, reap; a graceful stop). It knows no ledger, no chain and no HTTP: those are
the parts :mod:`blueprint.assembly` gives it. A job's life is kept by those parts (the ledger's
states), never by where the runner happens to be.

Order of a run: the consumer starts, then the background services (in order); ``on_ready`` is
called; the ``backlog`` (what a previous run left owed) is taken up; the producer starts and jobs
are taken until :meth:`Runner.request_stop`. Then intake stops at once, calls still waiting in
``admit`` are cancelled (they hold no work), running jobs (and their submissions) get
``shutdown_timeout_s`` to finish, the rest are cancelled, the consumer closes, and the services
stop in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

Call = TypeVar("Call")
Result = TypeVar("Result")
Call_co = TypeVar("Call_co", covariant=True)
Result_contra = TypeVar("Result_contra", contravariant=True)


class Producer(Protocol[Call_co]):
    """A stream of job calls, each delivered once (:class:`blueprint.tangle.producer.Producer`)."""

    async def start(self) -> None: ...
    async def get(self) -> Call_co: ...
    async def stop(self) -> None: ...


class Consumer(Protocol[Result_contra]):
    """The sink of results (:class:`blueprint.daemon.JobConsumer`)."""

    async def start(self) -> None: ...
    async def submit(self, result: Result_contra) -> object: ...
    async def close(self, grace: float) -> None: ...


class BackgroundService(Protocol):
    """Something that runs beside the jobs for the runner's lifetime (HTTP API, heartbeats)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Backlog(Generic[Call, Result]):
    """What a previous run left owed: calls to run again and results to send again."""

    rerun: Sequence[Call] = field(default_factory=list)
    resend: Sequence[Result] = field(default_factory=list)


def _no_fields(_item: object) -> Mapping[str, object]:
    return {}


def _no_scope(_item: object) -> AbstractContextManager[object]:
    return nullcontext()


class Runner(Generic[Call, Result]):
    """Runs jobs from a producer through a router into a consumer.

    Args:
        producer: the job calls.
        router: computes a call's result; None means there is nothing to submit (the call left
            our hands meanwhile). It should turn a job's own failure into a result.
        consumer: takes results (``submit`` returns once the result's fate is known).
        services: started before intake, stopped after the drain (in reverse order).
        admit: runs before a call takes a routing slot, holding none: it may wait (a stand-by
            operator's turn in a service of many), return the call to route, or None to drop
            it. Intake then takes every call at once (each waits apart); without ``admit``,
            intake takes a call only when a slot is free (backpressure on the producer).
        backlog: called once before intake; its reruns and resends are processed first.
        on_ready: called once the services run, before the backlog and intake.
        on_error: told of a job whose routing or submission raised (the job stays owed).
        log_fields: the log context of a call or a result (bound while it is processed).
        scope: a context entered around a call's routing and submission (the job's trace span).
        max_concurrent: jobs routed at once; intake waits while every slot is taken.
        shutdown_timeout_s: how long running jobs may finish after a stop request.
    """

    def __init__(
        self,
        producer: Producer[Call],
        router: Callable[[Call], Awaitable[Result | None]],
        consumer: Consumer[Result],
        *,
        services: Iterable[BackgroundService] = (),
        admit: Callable[[Call], Awaitable[Call | None]] | None = None,
        backlog: Callable[[], Awaitable[Backlog[Call, Result]]] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        log_fields: Callable[[Call | Result], Mapping[str, object]] = _no_fields,
        scope: Callable[[Call], AbstractContextManager[object]] = _no_scope,
        max_concurrent: int = 64,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.router = router
        self.consumer = consumer
        self.services = list(services)
        self.admit = admit
        self.backlog = backlog
        self.on_ready = on_ready
        self.on_error = on_error
        self.log_fields = log_fields
        self.scope = scope
        self.max_concurrent = max_concurrent
        self.shutdown_timeout_s = shutdown_timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        #: calls waiting in ``admit`` (no work in hand): cancelled at once on stop
        self._admitting: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self.jobs_started = 0
        self.jobs_done = 0

    def request_stop(self) -> None:
        """Stop taking jobs (signal handlers call this); :meth:`run` then drains and returns."""
        self._stop.set()

    async def run(self) -> None:
        """Start everything, take jobs until :meth:`request_stop`, then drain within the bound."""
        log.info("runner.starting", max_concurrent=self.max_concurrent, services=len(self.services))
        await self.consumer.start()
        started: list[BackgroundService] = []
        try:
            for service in self.services:
                await service.start()
                started.append(service)
            if self.on_ready is not None:
                self.on_ready()
            if self.backlog is not None:
                owed = await self.backlog()
                for result in owed.resend:
                    self._spawn(self._resend(result))
                for call in owed.rerun:
                    self._spawn(self._process(call))
            await self._take_jobs()
        finally:
            await self._drain()
            await self.consumer.close(max(1.0, self.shutdown_timeout_s / 2))
            for service in reversed(started):
                try:
                    await service.stop()
                except Exception:  # one service failing to stop must not keep the others running
                    log.exception("runner.service_stop_failed", service=type(service).__name__)
            log.info("runner.stopped", jobs_started=self.jobs_started, jobs_done=self.jobs_done)

    async def _take_jobs(self) -> None:
        await self.producer.start()
        intake = asyncio.create_task(self._intake(), name="runner-intake")
        stopper = asyncio.create_task(self._stop.wait(), name="runner-stop")
        try:
            await asyncio.wait({intake, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if intake.done() and not intake.cancelled() and intake.exception() is not None:
                raise intake.exception()  # type: ignore[misc]
        finally:
            intake.cancel()
            stopper.cancel()
            await asyncio.gather(intake, stopper, return_exceptions=True)
            await self.producer.stop()

    async def _intake(self) -> None:
        if self.admit is not None:  # calls wait their turn in admit, then for a slot, each apart
            while not self._stop.is_set():
                self._spawn(self._process(await self.producer.get()))
            return
        while not self._stop.is_set():
            await self._slots.acquire()
            try:
                call = await self.producer.get()
            except BaseException:
                self._slots.release()
                raise
            self._spawn(self._process(call, holding_slot=True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        for task in list(self._admitting):
            task.cancel()  # waiting for its turn, no work in hand: its parts keep it owed
        if not self._tasks:
            return
        log.info("runner.draining", running=len(self._tasks), timeout_s=self.shutdown_timeout_s)
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("runner.drain_timeout", cancelled=len(pending),
                        note="cancelled jobs stay owed and are taken up on the next start")

    async def _process(self, call: Call, *, holding_slot: bool = False) -> None:
        """Admit, route one call and submit its result. Never raises (except cancellation)."""
        self.jobs_started += 1
        holding = holding_slot
        with structlog.contextvars.bound_contextvars(**self.log_fields(call)), self.scope(call):
            try:
                if self.admit is not None:
                    admitted = await self._admit(call)
                    if admitted is None:
                        return
                    call = admitted
                if not holding:
                    await self._slots.acquire()
                    holding = True
                try:
                    result = await self.router(call)
                finally:
                    self._slots.release()
                    holding = False
                if result is not None:
                    await self.consumer.submit(result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job stays owed (its parts keep its state) for the next start
                self._failed(exc)
            finally:
                if holding:
                    self._slots.release()
                self.jobs_done += 1

    async def _admit(self, call: Call) -> Call | None:
        assert self.admit is not None
        task = asyncio.current_task()
        if task is not None:
            self._admitting.add(task)
        try:
            return await self.admit(call)
        finally:
            if task is not None:
                self._admitting.discard(task)

    async def _resend(self, result: Result) -> None:
        with structlog.contextvars.bound_contextvars(**self.log_fields(result)):
            try:
                await self.consumer.submit(result)
            except asyncio.CancelledError:
                raise
            except Exception:  # still owed: the next start sends it again
                log.exception("runner.resend_error")

    def _failed(self, exc: BaseException) -> None:
        log.error("runner.job_error", exc_info=exc)
        if self.on_error is not None:
            self.on_error(exc)
