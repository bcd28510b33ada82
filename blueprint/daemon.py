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
``submitted``, ``standby``, ``taken_over``): it first asks the chain whether the job is already
answered (completed, or our own ``JobResultSubmitted``); if so it is ``confirmed`` (or
``answered_by_another``); otherwise an unanswered job runs again from the inputs kept in the
ledger (a stand-by one waits out the rest of its turn first), and an answered one has its stored
result sent again.

With several operators (an :class:`~blueprint.assigner.Assigner`), each job is first placed in
the service's ranking (:mod:`blueprint.tangle.assignment`): not ours -> ``skipped``; another
operator first -> ``standby`` until our turn (``taken_over``) or until its result completes the
job (``answered_by_another``). A job we compute waits for capacity (ahead of HTTP traffic) and is
retried on transient failures until our ``give_up`` time; then it is left to the next operator
(back to ``standby``), and only the last in the ranking answers with the error.

SIGTERM/SIGINT stops intake at once, lets running jobs (and their submissions) finish for up to
``shutdown_timeout_s``, then cancels the rest; whatever was cancelled stays in a pending state in
the ledger, which the next start resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import TYPE_CHECKING, Any

import structlog

from blueprint.assigner import Assigner, JobPlan, single_operator_plan
from blueprint.balancer.priority import chain_job
from blueprint.jobs.router import RouteOutcome, Router
from blueprint.tangle.ledger import IllegalTransitionError, JobRecord, JobState
from blueprint.tangle.types import JobCall, JobResult

if TYPE_CHECKING:
    from blueprint.config import Settings
    from blueprint.context import Context
    from blueprint.contracts.offer_book import OfferBook
    from blueprint.quoting.quoter import Quoter
    from blueprint.tangle.completions import CompletionWatch
    from blueprint.tangle.consumer import Consumer
    from blueprint.tangle.ledger import Ledger
    from blueprint.tangle.producer import Producer

log = structlog.get_logger(__name__)

#: Longest result text written to a dry-run log line.
_LOG_RESULT_CHARS = 2000
#: Error codes of a passing condition (busy, no healthy node for a moment, an engine failure):
#: tried again until the job's deadline, never a final answer before it.
TRANSIENT_ERRORS = frozenset({"overloaded", "no_healthy_node", "backend_error", "backend_timeout"})
#: Pause between two attempts of a job that failed transiently (doubling up to the cap).
_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 2.0
_LEAVE = object()  # a job left to the next operator at our deadline


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
        assigner: the multi-operator rule (None: we answer every job, as the only operator).
        watch: completed jobs of the service, for stand-by (needed with an assigner).
        patience_s: how long a job we must answer waits for capacity before an error result.
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
        assigner: Assigner | None = None,
        watch: CompletionWatch | None = None,
        patience_s: float = 300.0,
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
        self.assigner = assigner
        self.watch = watch
        self.patience_s = patience_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        #: jobs standing by (no work in hand): cancelled at once on stop, resumed from the ledger
        self._standing_by: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        #: jobs from blocks up to this one were submitted before we started (backfilled)
        self._backfill_until = -1
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
        if self.watch is not None:
            try:
                self._backfill_until = int(await self.consumer.w3.eth.block_number)
            except Exception as exc:  # unknown: every job is then treated as fresh
                log.warning("daemon.head_unknown", error=str(exc) or type(exc).__name__)
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
        for task in list(self._standing_by):
            task.cancel()  # nothing to finish: the ledger keeps them `standby` for the next start
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

    async def _process(self, call: JobCall, *, holding_slot: bool = False, resumed: bool = False) -> None:
        """Place one job, wait our turn, run it and submit its answer. Never raises (except
        cancellation). A stand-by job holds no handler slot while it waits. A ``resumed`` job
        keeps the state and the first-seen time the ledger has for it (a fresh one is ``seen`` now)."""
        self.jobs_started += 1
        metrics = self.ctx.metrics
        holding = holding_slot
        with structlog.contextvars.bound_contextvars(call_id=call.call_id, service_id=call.service_id,
                                                     job_index=call.job_index):
            try:
                metrics.jobs_seen.labels(str(call.job_index)).inc()
                record = await self.ledger.get(call.service_id, call.call_id) if resumed else None
                state = record.state if record is not None else JobState.SEEN
                if record is None and await self._answered_while_away(call):
                    return
                plan = await self._plan(call, record)
                if plan is None:
                    return
                if state is JobState.STANDBY or (state is not JobState.TAKEN_OVER and plan.position > 0):
                    if holding:
                        self._slots.release()
                        holding = False
                    if not await self._stand_by(call, plan, state):
                        return
                if not holding:
                    await self._slots.acquire()
                    holding = True
                try:
                    outcome = await self._compute(call, plan)
                finally:
                    self._slots.release()
                    holding = False
                if outcome is _LEAVE:
                    await self._leave(call, plan)
                    return
                if outcome is None:
                    return
                await self._submit(JobResult(call.service_id, call.call_id, outcome))  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:  # a ledger or consumer failure: the job stays pending for resume
                metrics.jobs_failed.inc()
                log.exception("daemon.job_error")
            finally:
                if holding:
                    self._slots.release()
                self.jobs_done += 1

    async def _answered_while_away(self, call: JobCall) -> bool:
        """A job submitted before we started (read by the backfill scan) that another operator
        already answered is recorded as such instead of being computed again."""
        if self.watch is None or call.block_number > self._backfill_until:
            return False
        try:
            completed = await self.watch.is_completed(call.call_id)
        except Exception as exc:  # cannot tell: go on (the chain refuses a second answer)
            log.warning("daemon.completion_check_failed", error=str(exc) or type(exc).__name__)
            return False
        if completed and await self._move(call, JobState.ANSWERED_BY_ANOTHER, "completed before we started"):
            self.ctx.metrics.assignment.labels("answered_by_another").inc()
            log.info("daemon.job_answered_by_another", backfilled=True)
            return True
        return False

    async def _plan(self, call: JobCall, record: JobRecord | None) -> JobPlan | None:
        """Where we stand for this job; None (after recording why) when it is not ours at all."""
        seen_at = record.seen_at if record is not None else None
        if self.assigner is None:
            return single_operator_plan(call, self.patience_s)
        try:
            plan = await self.assigner.plan(call, seen_at)
        except Exception as exc:  # offers unreadable: answering twice beats losing the job
            log.warning("daemon.assignment_failed", error=str(exc) or type(exc).__name__)
            return single_operator_plan(call, self.patience_s)
        if not plan.eligible:
            await self._move(call, JobState.SKIPPED, plan.describe())
            self.ctx.metrics.assignment.labels("skipped").inc()
            log.info("daemon.job_skipped", reason=plan.describe(), model=plan.model)
            return None
        return plan

    async def _move(self, call: JobCall, target: JobState, reason: str | None = None) -> bool:
        """Transition the job if its state allows it (a reorg may have moved it meanwhile)."""
        try:
            await self.ledger.transition(call.service_id, call.call_id, target, reason=reason)
            return True
        except IllegalTransitionError as exc:
            log.info("daemon.ledger_skip", target=str(target), current=str(exc.current))
            return False

    async def _stand_by(self, call: JobCall, plan: JobPlan, state: JobState) -> bool:
        """Wait for our turn; True when we take the job over, False when another answered it (or
        our turn already passed: then we only watch until the ranking has had its turn)."""
        metrics = self.ctx.metrics
        if state is JobState.SEEN:
            if not await self._move(call, JobState.STANDBY, f"{plan.describe()}; our turn in "
                                    f"{max(0.0, plan.start - time.time()):.1f}s"):
                return False
            metrics.assignment.labels("standby").inc()
            log.info("daemon.job_standby", position=plan.position, responsible=plan.assignment.responsible
                     if plan.assignment else None, turn_in_s=round(max(0.0, plan.start - time.time()), 2))
        watch_only = time.time() >= plan.give_up and not plan.last
        until = plan.end if watch_only else plan.start
        if await self._completed(call, until):
            await self._move(call, JobState.ANSWERED_BY_ANOTHER, "JobCompleted")
            metrics.assignment.labels("answered_by_another").inc()
            log.info("daemon.job_answered_by_another")
            return False
        if watch_only:
            await self._move(call, JobState.FAILED, "our turn passed while we were away, and no "
                             "operator's result was seen by the end of the ranking")
            return False
        if not await self._move(call, JobState.TAKEN_OVER, f"no result after {self._since_seen(plan):.1f}s"):
            return False
        metrics.assignment.labels("taken_over").inc()
        log.info("daemon.job_taken_over", position=plan.position, after_s=round(self._since_seen(plan), 2))
        return True

    def _since_seen(self, plan: JobPlan) -> float:
        position = plan.position
        takeover = self.assigner.takeover_after_s if self.assigner is not None else 0.0
        return time.time() - (plan.start - position * takeover)

    async def _completed(self, call: JobCall, until_wall: float) -> bool:
        """Whether the job completes before ``until_wall`` (checked on chain at the end)."""
        task = asyncio.current_task()
        if task is not None:
            self._standing_by.add(task)
        try:
            if self.watch is None:
                await asyncio.sleep(max(0.0, until_wall - time.time()))
                return False
            until = time.monotonic() + max(0.0, until_wall - time.time())
            if await self.watch.wait(call.call_id, from_block=call.block_number, until=until):
                return True
        finally:
            if task is not None:
                self._standing_by.discard(task)
        try:
            return await self.watch.is_completed(call.call_id)
        except Exception as exc:  # cannot tell: taking over is safe (the chain refuses a second answer)
            log.warning("daemon.completion_check_failed", error=str(exc) or type(exc).__name__)
            return False

    async def _leave(self, call: JobCall, plan: JobPlan) -> None:
        """Our deadline passed without capacity: stand by for the next operator's answer."""
        self.ctx.metrics.assignment.labels("left").inc()
        log.warning("daemon.job_left", position=plan.position, note="no capacity before our deadline; "
                    "the next operator in the ranking takes over")
        if not await self._move(call, JobState.STANDBY, "left to the next operator at our deadline"):
            return
        if await self._completed(call, plan.end):
            await self._move(call, JobState.ANSWERED_BY_ANOTHER, "JobCompleted")
            self.ctx.metrics.assignment.labels("answered_by_another").inc()
        else:
            await self._move(call, JobState.FAILED, "left to the next operator; no result seen by the end "
                             "of the ranking")

    async def _compute(self, call: JobCall, plan: JobPlan) -> bytes | object | None:
        """``running`` -> handler -> encoded answer; ``_LEAVE`` when our deadline passed without
        an answer worth giving; None if the job left our hands meanwhile."""
        try:
            await self.ledger.mark_running(call.service_id, call.call_id)
        except IllegalTransitionError as exc:
            if exc.current is not JobState.RUNNING:
                log.info("daemon.job_skipped", state=str(exc.current))
                return None
        metrics = self.ctx.metrics
        if plan.position == 0:
            metrics.assignment.labels("computed").inc()
        deadline = time.monotonic() + max(0.0, plan.give_up - time.time())
        pause = _RETRY_FIRST_S
        attempt = 0
        while True:
            attempt += 1
            metrics.in_flight.inc()
            try:
                with chain_job(deadline):
                    outcome = await self.router.route(call.job_index, call.inputs, self.ctx)
            finally:
                metrics.in_flight.dec()
            left = deadline - time.monotonic()
            if outcome.ok or outcome.error_code not in TRANSIENT_ERRORS:
                break
            if left <= 0:
                if not plan.last:
                    return _LEAVE
                break  # the last in the ranking answers, even with the error
            metrics.assignment.labels("retried").inc()
            log.info("daemon.job_retry", error_code=outcome.error_code, attempt=attempt,
                     left_s=round(left, 2))
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _RETRY_MAX_S)
        self._record_outcome(call, outcome)
        return outcome.output

    def _record_outcome(self, call: JobCall, outcome: RouteOutcome) -> None:
        metrics = self.ctx.metrics
        metrics.handler_seconds.labels(str(call.job_index)).observe(outcome.elapsed_s)
        metrics.jobs_answered.labels(str(call.job_index), outcome.error_code or "ok").inc()
        log.info("daemon.job_answered", ok=outcome.ok, error_code=outcome.error_code,
                 handler_ms=round(outcome.elapsed_s * 1000, 2), result_bytes=len(outcome.output))

    async def _submit(self, result: JobResult, *, verify: bool = False) -> None:
        if self.dry_run:
            await self.ledger.mark_answered(result.service_id, result.call_id, result.output)
            from blueprint.jobs.codec import decode_result

            log.info("daemon.dry_run_result", result=decode_result(result.output)[:_LOG_RESULT_CHARS])
            return
        fate = await self.consumer.submit(result, verify=verify)
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
            self._spawn(self._process(call, resumed=True))

    async def _resubmit(self, result: JobResult) -> None:
        with structlog.contextvars.bound_contextvars(call_id=result.call_id, service_id=result.service_id):
            try:
                await self._submit(result, verify=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("daemon.resubmit_error")


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
    ctx = await Context.create(settings, with_chain=True)
    assert ctx.ledger is not None and ctx.chain is not None and ctx.txm is not None
    server = None
    chain_metrics: ChainMetrics | None = None
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
        book, watch, assigner = await _multi_operator(settings, ctx)
        daemon = Daemon(
            ctx, ledger=ctx.ledger, producer=producer, consumer=consumer, service_id=settings.service_id,
            router=Router(timeout_s=jobs.job_timeout_s), max_concurrent=jobs.max_concurrent,
            shutdown_timeout_s=jobs.shutdown_timeout_s, dry_run=settings.dry_run,
            assigner=assigner, watch=watch, patience_s=jobs.job_timeout_s,
        )
        if settings.server.enabled:
            from blueprint.quoting.quoter import quotes_from_settings
            from blueprint.server.app import create_app, include_metrics
            from blueprint.server.quote_route import enable_quotes
            from blueprint.server.runner import start_server

            app = create_app(ctx.balancer, settings.server)
            chain_metrics = ChainMetrics(ctx.ledger, producer=producer, txm=ctx.txm, w3=ctx.chain.w3)
            include_metrics(app, ctx.metrics.registry, chain_metrics)
            if ctx.operator is not None:  # POST /v1/quote signs with the operator's key
                quoter = quotes_from_settings(settings, ctx.balancer, ctx.operator.account,
                                              await ctx.chain.w3.eth.chain_id)
                if quoter is not None:
                    enable_quotes(app, quoter)
                    _price_quotes_from_chain(book, quoter, ctx.operator.address)
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
            await daemon.run()
        finally:
            if chain_metrics is not None:
                await chain_metrics.stop()
            if heartbeat is not None:
                await heartbeat.stop()
            await book.stop()
            await watch.close()
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


async def _multi_operator(settings: Settings, ctx: Context) -> tuple[OfferBook, CompletionWatch, Assigner]:
    """The offers of the service (kept fresh from the manager), the completions watch and the
    assignment rule, for a daemon that may share its service with other operators."""
    from blueprint.contracts.offer_book import OfferBook
    from blueprint.tangle.completions import CompletionWatch

    assert ctx.chain is not None and ctx.operator is not None and settings.service_id is not None
    jobs = settings.jobs
    book = await OfferBook.for_service(ctx.chain, settings.service_id, blueprint_id=settings.blueprint_id,
                                       poll_interval_s=jobs.poll_interval_s, refresh_s=jobs.offers_refresh_s)
    await book.start()
    watch = CompletionWatch(ctx.chain.w3, settings.tangle_contract, settings.service_id,
                            poll_interval_s=jobs.poll_interval_s)
    balancer = ctx.balancer
    assigner = Assigner(
        book, ctx.operator.address, quoted=watch,
        serves=lambda model: any(info.id == model for info in balancer.models()),
        takeover_after_s=jobs.takeover_after_s, last_patience_s=jobs.job_timeout_s,
        weighting=jobs.assignment_weighting,
    )
    return book, watch, assigner


def _price_quotes_from_chain(book: OfferBook, quoter: Quoter, operator: str) -> None:
    """Quotes are priced from our offer as the manager holds it (what a client can check with
    ``quotePrice``), followed on every change; the configured prices only until it is read."""

    def follow(current: OfferBook) -> None:
        offer = current.offer_of(operator)
        if offer is not None and offer.models:
            quoter.offer = offer

    book.on_change(follow)


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
