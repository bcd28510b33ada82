"""The operator daemon: producer -> router -> handler -> consumer, with a durable ledger.

Shaped like arq's ``Worker``: one class whose constructor takes every knob, a short main loop
(take a job, start it under a semaphore, reap), explicit job states (kept in the ledger, never
implied by where the code is), and a graceful stop.

The life of a job and who writes each ledger state:

* ``seen``: the producer, in the same transaction as the cursor (so a crash loses nothing);
* ``running``: here, before the handler runs;
* ``answered``: the consumer (or here in ``--dry-run``), with the encoded result;
* ``submitted`` / ``confirmed`` / ``failed``: the consumer, from the transaction's fate.

Every job gets an answer: the router turns any failure into an error object result.

On start the daemon resumes what the ledger says is owed (``seen``, ``running``, ``answered``,
``submitted``): it first asks the chain whether the job is already answered (completed, or our
own ``JobResultSubmitted``); if so it is ``confirmed``; otherwise an unanswered job runs again
from the inputs kept in the ledger, and an answered one has its stored result sent again.

SIGTERM/SIGINT stops intake at once, lets running jobs (and their submissions) finish for up to
``shutdown_timeout_s``, then cancels the rest; whatever was cancelled stays in a pending state in
the ledger, which the next start resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import TYPE_CHECKING, Any

import structlog

from blueprint import tracing
from blueprint.jobs.router import Router
from blueprint.tangle.ledger import IllegalTransitionError, JobState
from blueprint.tangle.types import JobCall, JobResult

if TYPE_CHECKING:
    from blueprint.config import Settings
    from blueprint.context import Context
    from blueprint.context.console_chain import LedgerChainView
    from blueprint.context.metrics import ChainMetrics
    from blueprint.tangle.consumer import Consumer
    from blueprint.tangle.ledger import Ledger
    from blueprint.tangle.producer import Producer

log = structlog.get_logger(__name__)

#: Longest result text written to a dry-run log line.
_LOG_RESULT_CHARS = 2000


class Daemon:
    """Answers every job of one service.

    Args:
        ctx: the shared context (balancer for handlers, metrics).
        ledger: the job ledger the producer and consumer share.
        producer: the stream of new job calls (each once).
        consumer: sends results (``submit`` records ``answered`` and returns the final fate).
        service_id: the service answered.
        router: job index -> handler (default: this blueprint's three jobs).
        max_concurrent: handlers running at once; intake waits when all slots are taken.
        shutdown_timeout_s: how long running jobs may finish after a stop request.
        dry_run: compute and record answers, log them, never submit.
        resume: answer what the ledger says is still owed before taking new jobs.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        ledger: Ledger,
        producer: Producer,
        consumer: Consumer,
        service_id: int,
        router: Router | None = None,
        max_concurrent: int = 64,
        shutdown_timeout_s: float = 30.0,
        dry_run: bool = False,
        resume: bool = True,
    ) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.producer = producer
        self.consumer = consumer
        self.service_id = service_id
        self.router = router or Router()
        self.max_concurrent = max_concurrent
        self.shutdown_timeout_s = shutdown_timeout_s
        self.dry_run = dry_run
        self.resume = resume
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.jobs_started = 0
        self.jobs_done = 0

    # --- the main loop -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking jobs (signal handlers call this); :meth:`run` then drains and returns."""
        self._stop.set()

    async def run(self) -> None:
        """Resume, then take jobs until :meth:`request_stop`; then drain within the bound."""
        log.info("daemon.starting", service_id=self.service_id, max_concurrent=self.max_concurrent,
                 dry_run=self.dry_run)
        await self.consumer.start()
        if self.resume:
            await self._resume()
        await self.producer.start()
        intake = asyncio.create_task(self._intake(), name="daemon-intake")
        stopper = asyncio.create_task(self._stop.wait(), name="daemon-stop")
        try:
            await asyncio.wait({intake, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if intake.done() and not intake.cancelled() and intake.exception() is not None:
                raise intake.exception()  # type: ignore[misc]
        finally:
            intake.cancel()
            stopper.cancel()
            await asyncio.gather(intake, stopper, return_exceptions=True)
            await self.producer.stop()
            await self._drain()
            await self.consumer.close(max(1.0, self.shutdown_timeout_s / 2))
            log.info("daemon.stopped", jobs_started=self.jobs_started, jobs_done=self.jobs_done)

    async def _intake(self) -> None:
        while not self._stop.is_set():
            await self._slots.acquire()
            try:
                call = await self.producer.get()
            except BaseException:
                self._slots.release()
                raise
            self._spawn(self._process(call, holding_slot=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("daemon.draining", running=len(self._tasks), timeout_s=self.shutdown_timeout_s)
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("daemon.drain_timeout", cancelled=len(pending),
                        note="cancelled jobs stay pending in the ledger and resume on the next start")

    # --- one job -----------------------------------------------------------------------------

    async def _process(self, call: JobCall, *, holding_slot: bool = False) -> None:
        """Run one job and submit its answer. Never raises (except cancellation)."""
        self.jobs_started += 1
        metrics = self.ctx.metrics
        with tracing.span("tangle.job", _job_attributes(call), kind="consumer") as span, \
                structlog.contextvars.bound_contextvars(call_id=call.call_id, service_id=call.service_id,
                                                        job_index=call.job_index,
                                                        **_trace_ids(span)):
            try:
                metrics.jobs_seen.labels(str(call.job_index)).inc()
                if not holding_slot:
                    await self._slots.acquire()
                try:
                    outcome = await self._compute(call)
                finally:
                    self._slots.release()
                if outcome is None:
                    return
                await self._submit(JobResult(call.service_id, call.call_id, outcome))
            except asyncio.CancelledError:
                raise
            except Exception:  # a ledger or consumer failure: the job stays pending for resume
                metrics.jobs_failed.inc()
                log.exception("daemon.job_error")
            finally:
                self.jobs_done += 1

    async def _compute(self, call: JobCall) -> bytes | None:
        """``running`` -> handler -> encoded answer (None if the job left our hands meanwhile)."""
        try:
            await self.ledger.mark_running(call.service_id, call.call_id)
        except IllegalTransitionError as exc:
            if exc.current is not JobState.RUNNING:
                log.info("daemon.job_skipped", state=str(exc.current))
                return None
        metrics = self.ctx.metrics
        metrics.in_flight.inc()
        try:
            outcome = await self.router.route(call.job_index, call.inputs, self.ctx)
        finally:
            metrics.in_flight.dec()
        metrics.handler_seconds.labels(str(call.job_index)).observe(outcome.elapsed_s)
        metrics.jobs_answered.labels(str(call.job_index), outcome.error_code or "ok").inc()
        log.info("daemon.job_answered", ok=outcome.ok, error_code=outcome.error_code,
                 handler_ms=round(outcome.elapsed_s * 1000, 2), result_bytes=len(outcome.output))
        return outcome.output

    async def _submit(self, result: JobResult, *, verify: bool = False) -> None:
        if self.dry_run:
            await self.ledger.mark_answered(result.service_id, result.call_id, result.output)
            from blueprint.jobs.codec import decode_result

            log.info("daemon.dry_run_result", result=decode_result(result.output)[:_LOG_RESULT_CHARS])
            return
        fate = await self.consumer.submit(result, verify=verify)
        if tracing.active():
            await _trace_transaction(self.ledger, result, fate.status, fate.tx_hash)
        if fate.status == "failed":
            self.ctx.metrics.jobs_failed.inc()
            log.warning("daemon.job_failed", reason=fate.reason)
        else:
            self.ctx.metrics.jobs_submitted.inc()
            log.info("daemon.job_done", status=fate.status, tx_hash=fate.tx_hash)
        record = await self.ledger.get(result.service_id, result.call_id)
        if record is not None and record.seen_at and record.submitted_at and record.answered_at:
            handler_s = (record.answered_at - (record.started_at or record.seen_at))
            overhead = record.submitted_at - record.seen_at - handler_s
            self.ctx.metrics.overhead_seconds.observe(max(0.0, overhead))

    # --- resume ------------------------------------------------------------------------------

    async def _resume(self) -> None:
        """Answer or resubmit what the ledger says is owed (the consumer checks the chain first)."""
        plan = await self.consumer.resume(self.service_id)
        for result in plan.resend:
            self._spawn(self._resubmit(result))
        for call in plan.rerun:
            self._spawn(self._process(call))

    async def _resubmit(self, result: JobResult) -> None:
        with structlog.contextvars.bound_contextvars(call_id=result.call_id, service_id=result.service_id):
            try:
                await self._submit(result, verify=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("daemon.resubmit_error")


def _job_attributes(call: JobCall) -> dict[str, tracing.AttributeValue] | None:
    if not tracing.active():
        return None
    from blueprint.tracing import attributes as attr

    return {attr.SERVICE_ID: call.service_id, attr.CALL_ID: call.call_id, attr.JOB_INDEX: call.job_index}


def _trace_ids(span: tracing.Span) -> dict[str, str]:
    trace_id = tracing.trace_id_hex(span)
    return {"trace_id": trace_id} if trace_id is not None else {}


async def _trace_transaction(ledger: Ledger, result: JobResult, status: str, tx_hash: str | None) -> None:
    """The answer's send and confirmation as spans, drawn from the ledger's timestamps (the
    consumer batches answers in its own task, so the times it recorded are the truth)."""
    from blueprint.tracing import attributes as attr

    record = await ledger.get(result.service_id, result.call_id)
    if record is None:
        return
    common: dict[str, tracing.AttributeValue] = {attr.CALL_ID: result.call_id, attr.TX_STATUS: status}
    if tx_hash:
        common[attr.TX_HASH] = tx_hash
    if record.answered_at is not None and record.submitted_at is not None:
        send = tracing.start_span("tangle.tx.send", common, kind="client", start_time_s=record.answered_at)
        tracing.end_span(send, end_time_s=max(record.answered_at, record.submitted_at))
    if record.submitted_at is not None and record.confirmed_at is not None:
        confirm = tracing.start_span("tangle.tx.confirm", common, start_time_s=record.submitted_at)
        tracing.end_span(confirm, end_time_s=max(record.submitted_at, record.confirmed_at))


# --- assembly --------------------------------------------------------------------------------

async def run_daemon(settings: Settings, *, stop: asyncio.Event | None = None,
                     install_signals: bool = True) -> None:
    """Build the context, the producer and the consumer from ``settings`` and run until stopped.

    Also serves the HTTP API in the same event loop unless ``settings.server.enabled`` is false;
    its ``GET /metrics`` then carries the job metrics and the chain figures too.
    """
    from blueprint.context import Context
    from blueprint.context.metrics import ChainMetrics
    from blueprint.tangle.consumer import Consumer
    from blueprint.tangle.producer import Producer

    if settings.service_id is None:
        raise ValueError("run_daemon needs settings.service_id")
    jobs = settings.jobs
    traced = tracing.configure_tracing(settings.tracing)
    ctx = await Context.create(settings, with_chain=True)
    assert ctx.ledger is not None and ctx.chain is not None and ctx.txm is not None
    server = None
    chain_metrics: ChainMetrics | None = None
    chain_view = None
    try:
        start_block = jobs.start_block
        if start_block is None:
            start_block = await _default_start_block(ctx, settings.service_id)
        producer = Producer(
            ctx.ledger, ctx.chain.w3, tangle_address=settings.tangle_contract,
            service_id=settings.service_id, ws_url=settings.ws_rpc_url, confirmations=jobs.confirmations,
            poll_interval=jobs.poll_interval_s, start_block=start_block,
        )
        consumer = Consumer(
            ctx.ledger, ctx.txm, settings.tangle_contract, batch_window=jobs.batch_window_s,
            max_batch=jobs.max_batch, retry_for=jobs.submit_retry_s, dry_run=settings.dry_run,
            presimulate=jobs.simulate_before_send,
        )
        daemon = Daemon(
            ctx, ledger=ctx.ledger, producer=producer, consumer=consumer, service_id=settings.service_id,
            router=Router(timeout_s=jobs.job_timeout_s), max_concurrent=jobs.max_concurrent,
            shutdown_timeout_s=jobs.shutdown_timeout_s, dry_run=settings.dry_run,
        )
        if settings.server.enabled:
            from blueprint.quoting.quoter import quotes_from_settings
            from blueprint.server.app import create_app, include_metrics
            from blueprint.server.console import attach_chain_view
            from blueprint.server.quote_route import enable_quotes
            from blueprint.server.runner import start_server

            app = create_app(ctx.balancer, settings.server)
            chain_metrics = ChainMetrics(ctx.ledger, producer=producer, txm=ctx.txm, w3=ctx.chain.w3)
            include_metrics(app, ctx.metrics.registry, chain_metrics)
            chain_view = _console_chain_view(settings, ctx, chain_metrics)
            attach_chain_view(app, chain_view)
            if ctx.operator is not None:  # POST /v1/quote signs with the operator's key
                quoter = quotes_from_settings(settings, ctx.balancer, ctx.operator.account,
                                              await ctx.chain.w3.eth.chain_id)
                if quoter is not None:
                    enable_quotes(app, quoter)
            server = await start_server(ctx.balancer, settings.server, app=app)
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, daemon.request_stop)
        watcher = None
        if stop is not None:
            watcher = asyncio.create_task(_relay(stop, daemon))
        log.info("daemon.ready", operator=ctx.operator.address if ctx.operator else None,
                 http=server.url if server else None)
        heartbeat = None
        try:
            if chain_metrics is not None:
                chain_metrics.start()
            if not settings.dry_run:  # keeps the operator online in the OperatorStatusRegistry
                from blueprint.tangle.heartbeat import heartbeat_for_daemon

                heartbeat = await heartbeat_for_daemon(settings, ctx)
                await heartbeat.start()
                if chain_view is not None:
                    chain_view.heartbeat = heartbeat
            await daemon.run()
        finally:
            if chain_metrics is not None:
                await chain_metrics.stop()
            if heartbeat is not None:
                await heartbeat.stop()
            if watcher is not None:
                watcher.cancel()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                await server.close()
        await ctx.close()
        if traced:  # flushes the last spans to the collector: off the event loop
            await asyncio.to_thread(tracing.shutdown_tracing)


def _console_chain_view(settings: Settings, ctx: Context, chain_metrics: ChainMetrics) -> LedgerChainView:
    from blueprint.context.console_chain import LedgerChainView

    assert ctx.ledger is not None and ctx.chain is not None and settings.service_id is not None
    return LedgerChainView(ctx.ledger, settings.service_id, ctx.operator.address if ctx.operator else None,
                           ctx.chain.w3, settings.tangle_contract, chain_metrics=chain_metrics, txm=ctx.txm)


async def _relay(stop: asyncio.Event, daemon: Daemon) -> None:
    await stop.wait()
    daemon.request_stop()


async def _default_start_block(ctx: Context, service_id: int) -> int:
    """Where a fresh ledger starts scanning: the block where the service was activated when the
    chain tells us, else the current head (never miss jobs of the future; scan from 0 with
    ``jobs.start_block = 0`` for the past)."""
    assert ctx.chain is not None
    head = await ctx.chain.w3.eth.block_number
    try:
        service = await ctx.chain.call(ctx.chain.tangle.functions.getService(service_id))
    except Exception:
        return int(head)
    created = _created_at(service)
    if created is None:
        return int(head)
    return await _first_block_at_or_after(ctx, created, int(head))


def _created_at(service: Any) -> int | None:
    """``createdAt`` of a ``getService`` struct (a tuple, or an object with attributes)."""
    value = getattr(service, "createdAt", None)
    if value is None and isinstance(service, (tuple, list)) and len(service) > 2:
        value = service[2]
    return int(value) if isinstance(value, int) and value > 0 else None


async def _first_block_at_or_after(ctx: Context, timestamp: int, head: int) -> int:
    """Binary search of the first block with ``timestamp >= timestamp`` (log2(head) headers):
    the service's activation block or an earlier one, never a later one."""
    assert ctx.chain is not None
    lo, hi = 0, head
    while lo < hi:
        mid = (lo + hi) // 2
        block = await ctx.chain.w3.eth.get_block(mid)
        if int(block["timestamp"]) >= timestamp:
            hi = mid
        else:
            lo = mid + 1
    return lo


def format_result(output: bytes) -> str:
    """A result as pretty JSON for humans (``dev`` prints it)."""
    from blueprint.jobs.codec import decode_result

    text = decode_result(output)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
