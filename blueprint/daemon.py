"""The operator daemon's two job steps between the chain SDK and the job handlers, as the generic
:class:`~blueprint.runner.Runner` takes them: :class:`JobRouter` (a call to its answer) and
:class:`JobConsumer` (an answer to the chain). :mod:`blueprint.assembly` builds them from the
settings together with the producer, the HTTP API, heartbeats and quotes.

The life of a job and who writes each ledger state:

* ``seen``: the producer, in the same transaction as the cursor (so a crash loses nothing);
* ``running``: :class:`JobRouter`, before the handler runs;
* ``answered``: the consumer (also under ``--dry-run``, which never sends), with the result;
* ``submitted`` / ``confirmed`` / ``failed``: the consumer, from the transaction's fate.

Every job gets an answer: the router turns any failure into an error object result.

On start what the ledger says is owed (``seen``, ``running``, ``answered``, ``submitted``) is
taken up first (:meth:`blueprint.tangle.consumer.Consumer.resume`): a job the chain already holds
an answer for is ``confirmed``; an unanswered one runs again from the inputs kept in the ledger,
an answered one has its stored result sent again.

On SIGTERM/SIGINT the runner stops intake at once, lets running jobs (and their submissions)
finish for up to ``shutdown_timeout_s``, then cancels the rest; whatever was cancelled stays in
a pending state in the ledger, which the next start takes up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import structlog

from blueprint import tracing
from blueprint.errors import BackendError
from blueprint.jobs.codec import decode_result
from blueprint.runner import Backlog
from blueprint.tangle.ledger import IllegalTransitionError, JobState
from blueprint.tangle.types import JobCall, JobResult

if TYPE_CHECKING:
    from blueprint.context import Context
    from blueprint.jobs.router import Router
    from blueprint.tangle.consumer import Consumer, SubmitOutcome
    from blueprint.tangle.ledger import Ledger

log = structlog.get_logger(__name__)

#: Longest result text written to a dry-run log line.
_LOG_RESULT_CHARS = 2000


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

    def __init__(self, ledger: Ledger, router: Router, ctx: Context, *, max_handler_runs: int = 2) -> None:
        self.ledger = ledger
        self.router = router
        self.ctx = ctx
        self.max_handler_runs = max_handler_runs

    async def __call__(self, call: JobCall) -> JobResult | None:
        metrics = self.ctx.metrics
        metrics.jobs_seen.labels(str(call.job_index)).inc()
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
            metrics.in_flight.inc()
            try:
                outcome = await self.router.route(call.job_index, call.inputs, self.ctx)
            except asyncio.CancelledError:  # a stop cut it short: that run does not count
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ledger.forget_run(call.service_id, call.call_id))
                raise
            finally:
                metrics.in_flight.dec()
        metrics.handler_seconds.labels(str(call.job_index)).observe(outcome.elapsed_s)
        metrics.jobs_answered.labels(str(call.job_index), outcome.error_code or "ok").inc()
        log.info("daemon.job_answered", ok=outcome.ok, error_code=outcome.error_code,
                 handler_ms=round(outcome.elapsed_s * 1000, 2), result_bytes=len(outcome.output))
        return JobResult(call.service_id, call.call_id, outcome.output)


class JobConsumer:
    """Sends answers through the chain consumer and counts their fate in the job metrics.

    Args:
        consumer: the chain consumer (it records ``answered`` and decides dry runs).
        ledger: read for the per-job overhead figure.
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
        record = await self.ledger.get(result.service_id, result.call_id)
        if record is not None and record.seen_at and record.submitted_at and record.answered_at:
            handler_s = (record.answered_at - (record.started_at or record.seen_at))
            overhead = record.submitted_at - record.seen_at - handler_s
            metrics.overhead_seconds.observe(max(0.0, overhead))
        return fate
