"""The operator daemon's job steps between the chain SDK and the job handlers, as the generic
:class:`~blueprint.runner.Runner` takes them: :class:`JobGate` (whether and when a call is ours,
in a service of several operators), :class:`JobRouter` (a call to its answer) and
:class:`JobConsumer` (an answer to the chain). :mod:`blueprint.assembly` builds them from the
settings together with the producer, the HTTP API, heartbeats and quotes.

The life of a job and who writes each ledger state:

* ``seen``: the producer, in the same transaction as the cursor (so a crash loses nothing);
* ``running``: :class:`JobRouter`, before the handler runs;
* ``answered``: the consumer (also under ``--dry-run``, which never sends), with the result;
* ``submitted`` / ``confirmed`` / ``failed``: the consumer, from the transaction's fate.

Every job gets an answer: the router turns any failure into an error object result.

With several operators, :class:`JobGate` places each job in the service's ranking
(:mod:`blueprint.tangle.assignment`) first, holding no handler slot: not ours -> ``skipped``;
another operator first -> ``standby`` until our turn (``taken_over``) or until its result
completes the job (``answered_by_another``). The router then waits for capacity (ahead of HTTP
traffic) and retries transient failures until our ``give_up`` time; past it the job is left to
the next operator (back to ``standby``), and only the last of the ranking answers with the error.

On start what the ledger says is owed (``seen``, ``running``, ``answered``, ``submitted``,
``standby``, ``taken_over``) is taken up first (:meth:`blueprint.tangle.consumer.Consumer.resume`):
a job the chain already holds an answer for is ``confirmed`` (or ``answered_by_another``); an
unanswered one runs again from the inputs kept in the ledger (a stand-by one first waits out the
rest of its turn), an answered one has its stored result sent again.

On SIGTERM/SIGINT the runner stops intake at once, lets running jobs (and their submissions)
finish for up to ``shutdown_timeout_s``, then cancels the rest; whatever was cancelled stays in
a pending state in the ledger, which the next start takes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import structlog

from blueprint import tracing
from blueprint.assigner import Assigner, JobPlan, single_operator_plan
from blueprint.balancer.priority import chain_job
from blueprint.errors import BackendError
from blueprint.jobs.codec import decode_result
from blueprint.runner import Backlog
from blueprint.tangle.ledger import IllegalTransitionError, JobState
from blueprint.tangle.types import JobCall, JobResult

if TYPE_CHECKING:
    from blueprint.context import Context
    from blueprint.jobs.router import RouteOutcome, Router
    from blueprint.tangle.completions import CompletionWatch
    from blueprint.tangle.consumer import Consumer, SubmitOutcome
    from blueprint.tangle.ledger import JobRecord, Ledger

log = structlog.get_logger(__name__)

#: Longest result text written to a dry-run log line.
_LOG_RESULT_CHARS = 2000
#: Error codes of a passing condition (busy, no healthy node for a moment, an engine failure):
#: tried again until the job's deadline, never a final answer before it.
TRANSIENT_ERRORS = frozenset({"overloaded", "no_healthy_node", "backend_error", "backend_timeout"})
#: Pause between two attempts of a job that failed transiently (doubling up to the cap).
_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 2.0


def job_log_fields(item: JobCall | JobResult) -> dict[str, object]:
    """The log context of a job call or result: its call id and service (and job index)."""
    fields: dict[str, object] = {"call_id": item.call_id, "service_id": item.service_id}
    if isinstance(item, JobCall):
        fields["job_index"] = item.job_index
    return fields


def job_trace(call: JobCall) -> AbstractContextManager[object]:
    """The job's trace (the runner's ``scope``): a root span around routing and submission, its
    trace id bound to the job's log lines; nothing at all while tracing is off."""
    if not tracing.active():
        return tracing.NO_SPAN
    return _job_span(call)


@contextlib.contextmanager
def _job_span(call: JobCall) -> Iterator[object]:
    from blueprint.tracing import attributes as attr

    attributes: dict[str, tracing.AttributeValue] = {
        attr.SERVICE_ID: call.service_id, attr.CALL_ID: call.call_id, attr.JOB_INDEX: call.job_index}
    with tracing.span("tangle.job", attributes, kind="consumer") as span:
        trace_id = tracing.trace_id_hex(span)
        with structlog.contextvars.bound_contextvars(**({"trace_id": trace_id} if trace_id else {})):
            yield span


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


class JobRouter:
    """``running`` -> handler -> the encoded answer (None if the job left our hands meanwhile).

    Args:
        ledger: the job ledger (the producer put every call in it).
        router: job index -> handler (:class:`blueprint.jobs.router.Router`).
        ctx: the shared context handed to handlers; its metrics count the jobs.
        max_handler_runs: the poison-job guard: a job whose handler was started this many times
            without finishing (each time the process died with it) gets a ``job_crashed`` error
            result instead of a further run, so one job cannot hold the daemon in a crash loop.
    """

    def __init__(self, ledger: Ledger, router: Router, ctx: Context, *, max_handler_runs: int = 2,
                 gate: JobGate | None = None) -> None:
        self.ledger = ledger
        self.router = router
        self.ctx = ctx
        self.max_handler_runs = max_handler_runs
        self.gate = gate

    async def __call__(self, call: JobCall) -> JobResult | None:
        metrics = self.ctx.metrics
        if self.gate is None:  # without a gate (one operator, tests) the router sees every job
            metrics.jobs_seen.labels(str(call.job_index)).inc()
            plan = single_operator_plan(call, self.router.timeout_s or 300.0)
        else:
            plan = self.gate.plan_of(call)
        runs = 0
        try:
            runs = (await self.ledger.mark_running(call.service_id, call.call_id)).runs
        except IllegalTransitionError as exc:
            if exc.current is not JobState.RUNNING:
                log.info("daemon.job_skipped", state=str(exc.current))
                return None
        if runs > self.max_handler_runs:
            log.error("daemon.poison_job", earlier_runs=runs - 1,
                      note="the process died with this job's handler each time: answered with an error")
            outcome = self.router.refuse(BackendError(
                f"This job was started {runs - 1} times and each time the operator's process died "
                "while computing it; it is not run again.", code="job_crashed"))
        else:
            try:
                routed = await self._patiently(call, plan)
            except asyncio.CancelledError:  # a stop cut it short: that run does not count
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ledger.forget_run(call.service_id, call.call_id))
                raise
            if routed is None:  # our deadline passed: the next operator takes over
                if self.gate is not None:
                    await self.gate.leave(call, plan)
                return None
            outcome = routed
        metrics.handler_seconds.labels(str(call.job_index)).observe(outcome.elapsed_s)
        metrics.jobs_answered.labels(str(call.job_index), outcome.error_code or "ok").inc()
        log.info("daemon.job_answered", ok=outcome.ok, error_code=outcome.error_code,
                 handler_ms=round(outcome.elapsed_s * 1000, 2), result_bytes=len(outcome.output))
        return JobResult(call.service_id, call.call_id, outcome.output)

    async def _patiently(self, call: JobCall, plan: JobPlan) -> RouteOutcome | None:
        """Route the job, its requests waiting for capacity ahead of HTTP traffic, and try a
        transient failure again until ``plan.give_up``. None when that passed without an answer
        worth giving and another operator comes after us; the last one answers the error."""
        metrics = self.ctx.metrics
        if plan.position == 0 and plan.assignment is not None:
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
                return outcome
            if left <= 0:
                return outcome if plan.last else None
            metrics.assignment.labels("retried").inc()
            log.info("daemon.job_retry", error_code=outcome.error_code, attempt=attempt,
                     left_s=round(left, 2))
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _RETRY_MAX_S)


class JobGate:
    """Whether and when a job is ours, in a service of several operators (see the module doc).

    The runner awaits :meth:`__call__` (its ``admit``) before it gives the job a handler slot, so
    stand-by jobs hold none; a job cut short there by a stop stays ``standby`` in the ledger for
    the next start.
    Also a background service: :meth:`start` reads the chain head (jobs up to it were submitted
    before we started) and starts the offers, :meth:`stop` ends the watches of jobs left to others.

    Args:
        ledger: the job ledger.
        ctx: the shared context (its metrics).
        assigner: the multi-operator rule fed with the chain's facts.
        watch: the service's completed jobs.
        patience_s: how long a job we must answer waits for capacity (the single-operator plan,
            used when the offers cannot be read).
        services: started and stopped with the gate (the offer book).
        head: reads the chain's head block number.
    """

    def __init__(self, ledger: Ledger, ctx: Context, assigner: Assigner, watch: CompletionWatch, *,
                 patience_s: float, head: Callable[[], Awaitable[int]],
                 services: tuple[Any, ...] = ()) -> None:
        self.ledger = ledger
        self.ctx = ctx
        self.assigner = assigner
        self.watch = watch
        self.patience_s = patience_s
        self.head = head
        self.services = services
        self._plans: dict[tuple[int, int], JobPlan] = {}
        self._resumed: set[tuple[int, int]] = set()
        self._backfill_until = -1
        self._watches: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for service in self.services:
            await service.start()
        try:
            self._backfill_until = int(await self.head())
        except Exception as exc:  # unknown: every job is then treated as fresh
            log.warning("daemon.head_unknown", error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        for task in list(self._watches):
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.stop()
        await self.watch.close()

    def resumed(self, calls: list[JobCall]) -> None:
        """These calls come from the ledger (their state and first sighting are kept there)."""
        self._resumed.update((c.service_id, c.call_id) for c in calls)

    def plan_of(self, call: JobCall) -> JobPlan:
        plan = self._plans.pop((call.service_id, call.call_id), None)
        return plan if plan is not None else single_operator_plan(call, self.patience_s)

    async def __call__(self, call: JobCall) -> JobCall | None:
        """Wait for our turn (the runner's ``admit``): the call when it is ours to compute now,
        None when it is not (the ledger says why)."""
        metrics = self.ctx.metrics
        metrics.jobs_seen.labels(str(call.job_index)).inc()
        key = (call.service_id, call.call_id)
        record = await self.ledger.get(*key) if key in self._resumed else None
        self._resumed.discard(key)
        state = record.state if record is not None else JobState.SEEN
        if record is None and await self._answered_while_away(call):
            return None
        plan = await self._plan(call, record)
        if plan is None:
            return None
        if state is JobState.STANDBY or (state is not JobState.TAKEN_OVER and plan.position > 0):
            if not await self._stand_by(call, plan, state):
                return None
        self._plans[key] = plan
        return call

    async def _answered_while_away(self, call: JobCall) -> bool:
        """A job submitted before we started (read by the backfill scan) that another operator
        already answered is recorded as such instead of being computed again."""
        if call.block_number > self._backfill_until:
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
            turn_in = max(0.0, plan.start - time.time())
            if not await self._move(call, JobState.STANDBY, f"{plan.describe()}; our turn in {turn_in:.1f}s"):
                return False
            metrics.assignment.labels("standby").inc()
            log.info("daemon.job_standby", position=plan.position, turn_in_s=round(turn_in, 2),
                     responsible=plan.assignment.responsible if plan.assignment else None)
        watch_only = time.time() >= plan.give_up and not plan.last
        if await self._completed(call, plan.end if watch_only else plan.start):
            await self._move(call, JobState.ANSWERED_BY_ANOTHER, "JobCompleted")
            metrics.assignment.labels("answered_by_another").inc()
            log.info("daemon.job_answered_by_another")
            return False
        if watch_only:
            await self._move(call, JobState.FAILED, "our turn passed while we were away, and no "
                             "operator's result was seen by the end of the ranking")
            return False
        waited = time.time() - (plan.start - plan.position * self.assigner.takeover_after_s)
        if not await self._move(call, JobState.TAKEN_OVER, f"no result after {waited:.1f}s"):
            return False
        metrics.assignment.labels("taken_over").inc()
        log.info("daemon.job_taken_over", position=plan.position, after_s=round(waited, 2))
        return True

    async def _completed(self, call: JobCall, until_wall: float) -> bool:
        """Whether the job completes before ``until_wall`` (checked on chain at the end)."""
        until = time.monotonic() + max(0.0, until_wall - time.time())
        if await self.watch.wait(call.call_id, from_block=call.block_number, until=until):
            return True
        try:
            return await self.watch.is_completed(call.call_id)
        except Exception as exc:  # cannot tell: taking over is safe (the chain refuses a second answer)
            log.warning("daemon.completion_check_failed", error=str(exc) or type(exc).__name__)
            return False

    async def leave(self, call: JobCall, plan: JobPlan) -> None:
        """Our deadline passed without capacity: stand by, in the background, for the next
        operator's answer (the handler slot is free again at once)."""
        self.ctx.metrics.assignment.labels("left").inc()
        log.warning("daemon.job_left", position=plan.position,
                    note="no capacity before our deadline; the next operator in the ranking takes over")
        if await self._move(call, JobState.STANDBY, "left to the next operator at our deadline"):
            self._spawn(self._watch_left(call, plan))

    async def _watch_left(self, call: JobCall, plan: JobPlan) -> None:
        with structlog.contextvars.bound_contextvars(call_id=call.call_id, service_id=call.service_id):
            try:
                if await self._completed(call, plan.end):
                    await self._move(call, JobState.ANSWERED_BY_ANOTHER, "JobCompleted")
                    self.ctx.metrics.assignment.labels("answered_by_another").inc()
                else:
                    await self._move(call, JobState.FAILED, "left to the next operator; no result seen "
                                     "by the end of the ranking")
            except asyncio.CancelledError:
                raise
            except Exception:  # the job stays `standby`: the next start watches it again
                log.exception("daemon.watch_failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)


class JobConsumer:
    """Sends answers through the chain consumer and counts their fate in the job metrics.

    Args:
        consumer: the chain consumer (it records ``answered`` and decides dry runs).
        ledger: read for the job's trace (when tracing is on).
        ctx: the shared context (its metrics).
        service_id: the service whose owed jobs :meth:`backlog` takes up.
    """

    def __init__(self, consumer: Consumer, ledger: Ledger, ctx: Context, service_id: int) -> None:
        self.consumer = consumer
        self.ledger = ledger
        self.ctx = ctx
        self.service_id = service_id

    async def start(self) -> None:
        await self.consumer.start()

    async def close(self, grace: float) -> None:
        await self.consumer.close(grace)

    async def backlog(self) -> Backlog[JobCall, JobResult]:
        """What the ledger says is owed, checked against the chain (:meth:`Consumer.resume`)."""
        plan = await self.consumer.resume(self.service_id)
        return Backlog(rerun=plan.rerun, resend=plan.resend)

    async def submit(self, result: JobResult) -> SubmitOutcome:
        fate = await self.consumer.submit(result)
        if tracing.active():
            await _trace_transaction(self.ledger, result, fate.status, fate.tx_hash)
        metrics = self.ctx.metrics
        if fate.status == "dry_run":
            log.info("daemon.dry_run_result", result=decode_result(result.output)[:_LOG_RESULT_CHARS])
            return fate
        if fate.status == "failed":
            metrics.jobs_failed.inc()
            log.warning("daemon.job_failed", reason=fate.reason)
        else:
            metrics.jobs_submitted.inc()
            log.info("daemon.job_done", status=fate.status, tx_hash=fate.tx_hash)
        if fate.overhead_s is not None:  # from the ledger row the consumer confirmed
            metrics.overhead_seconds.observe(fate.overhead_s)
        return fate
