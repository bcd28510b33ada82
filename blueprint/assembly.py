"""The one assembly: everything the operator runs, built from :class:`~blueprint.config.Settings`.

``run`` (and ``dev``, which starts ``run`` the way the blueprint manager does) goes through
:func:`run_daemon`: the shared context, the producer, the consumer, and as background services of
the :class:`~blueprint.runner.Runner` the HTTP API (with the job and chain metrics and, with an
operator key, signed quotes priced from the operator's on-chain offer), the chain-metrics
refresher and the heartbeat; and the job gate of a service of several operators (the offers read
from the manager, the completions watch, the assignment rule). ``serve`` goes
through :func:`serve_api`: the same context without the chain, and the HTTP API alone. Nothing
else wires these parts together.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from blueprint import tracing
from blueprint.assigner import Assigner
from blueprint.context import Context
from blueprint.daemon import JobConsumer, JobGate, JobRouter, job_log_fields, job_trace
from blueprint.jobs.router import Router
from blueprint.runner import BackgroundService, Backlog, Runner
from blueprint.tangle.types import JobCall, JobResult

if TYPE_CHECKING:
    from aiohttp import web

    from blueprint.balancer import Balancer
    from blueprint.config import Settings
    from blueprint.context.console_chain import LedgerChainView
    from blueprint.context.metrics import ChainMetrics
    from blueprint.contracts.offer_book import OfferBook
    from blueprint.quoting.quoter import Quoter
    from blueprint.server.runner import RunningServer
    from blueprint.server.settings import ServerSettings
    from blueprint.tangle.chain import ChainClient

log = structlog.get_logger(__name__)


class ApiService:
    """The OpenAI-compatible HTTP API as a background service of the runner."""

    def __init__(self, balancer: Balancer, settings: ServerSettings, app: web.Application) -> None:
        self.balancer = balancer
        self.settings = settings
        self.app = app
        self.running: RunningServer | None = None

    @property
    def url(self) -> str | None:
        return self.running.url if self.running is not None else None

    async def start(self) -> None:
        from blueprint.server.runner import start_server

        self.running = await start_server(self.balancer, self.settings, app=self.app)

    async def stop(self) -> None:
        running, self.running = self.running, None
        if running is not None:
            await running.close()


JobRunner = Runner[JobCall, JobResult]


async def build_daemon(settings: Settings, ctx: Context) -> tuple[JobRunner, ApiService | None]:
    """The runner of ``settings.service_id`` over ``ctx`` (built with the chain), and its API."""
    from blueprint.context.metrics import ChainMetrics
    from blueprint.tangle.consumer import Consumer
    from blueprint.tangle.producer import Producer

    service_id = settings.service_id
    if service_id is None:
        raise ValueError("run_daemon needs settings.service_id")
    if ctx.ledger is None or ctx.chain is None or ctx.txm is None:
        raise ValueError("the daemon needs a context built with the chain")
    jobs = settings.jobs
    start_block = jobs.start_block
    if start_block is None:
        start_block = await default_start_block(ctx.chain, service_id)
    producer = Producer(
        ctx.ledger, ctx.chain.w3, tangle_address=settings.tangle_contract, service_id=service_id,
        ws_url=settings.ws_rpc_url, confirmations=jobs.confirmations, poll_interval=jobs.poll_interval_s,
        start_block=start_block,
    )
    consumer = JobConsumer(Consumer(
        ctx.ledger, ctx.txm, settings.tangle_contract, batch_window=jobs.batch_window_s,
        max_batch=jobs.max_batch, retry_for=jobs.submit_retry_s, dry_run=settings.dry_run,
        presimulate=jobs.simulate_before_send, max_dispatch=jobs.submit_concurrency,
    ), ctx.ledger, ctx, service_id)
    gate, book = await build_gate(settings, ctx)
    services: list[BackgroundService] = [gate]
    api = None
    chain_view: LedgerChainView | None = None
    if settings.server.enabled:
        from blueprint.server.app import create_app, include_metrics
        from blueprint.server.console import attach_chain_view, attach_quote_log

        app = create_app(ctx.balancer, settings.server)
        chain_metrics = ChainMetrics(ctx.ledger, producer=producer, txm=ctx.txm, w3=ctx.chain.w3)
        include_metrics(app, ctx.metrics.registry, chain_metrics)
        chain_view = _console_chain_view(settings, ctx, chain_metrics)
        attach_chain_view(app, chain_view)
        if ctx.operator is not None:  # POST /v1/quote signs with the operator's key
            from blueprint.quoting.quoter import quotes_from_settings
            from blueprint.server.quote_route import enable_quotes

            quoter = quotes_from_settings(settings, ctx.balancer, ctx.operator.account,
                                          await ctx.chain.w3.eth.chain_id)
            if quoter is not None:
                enable_quotes(app, quoter)
                attach_quote_log(app, quoter)
                price_quotes_from_chain(book, quoter, ctx.operator.address)
        api = ApiService(ctx.balancer, settings.server, app)
        services += [api, chain_metrics]
    if not settings.dry_run:  # keeps the operator online in the OperatorStatusRegistry
        from blueprint.tangle.heartbeat import heartbeat_for_daemon

        heartbeat = await heartbeat_for_daemon(settings, ctx.chain, ctx.txm, ctx.balancer)
        services.append(heartbeat)
        if chain_view is not None:
            chain_view.heartbeat = heartbeat
    job_router = JobRouter(ctx.ledger, Router(timeout_s=jobs.job_timeout_s), ctx,
                           max_handler_runs=jobs.max_handler_runs, gate=gate)

    async def backlog() -> Backlog[JobCall, JobResult]:
        owed = await consumer.backlog()
        gate.resumed(list(owed.rerun))
        return owed

    runner: JobRunner = Runner(
        producer, job_router, consumer, admit=gate,
        services=services, backlog=backlog, log_fields=job_log_fields, scope=job_trace,
        on_error=lambda _exc: ctx.metrics.jobs_failed.inc(),
        max_concurrent=jobs.max_concurrent, shutdown_timeout_s=jobs.shutdown_timeout_s,
    )
    return runner, api


async def build_gate(settings: Settings, ctx: Context) -> tuple[JobGate, OfferBook]:
    """The job gate of a service that may have other operators: the offers of the service (read
    from the manager, refreshed on its events), the completions watch and the assignment rule."""
    from blueprint.contracts.offer_book import OfferBook
    from blueprint.tangle.completions import CompletionWatch

    if ctx.chain is None or ctx.operator is None or ctx.ledger is None or settings.service_id is None:
        raise ValueError("the job gate needs a context built with the chain and a service id")
    jobs = settings.jobs
    chain = ctx.chain
    book = await OfferBook.for_service(chain, settings.service_id, blueprint_id=settings.blueprint_id,
                                       poll_interval_s=jobs.poll_interval_s, refresh_s=jobs.offers_refresh_s)
    watch = CompletionWatch(chain.w3, settings.tangle_contract, settings.service_id,
                            poll_interval_s=jobs.poll_interval_s)
    balancer = ctx.balancer
    assigner = Assigner(
        book, ctx.operator.address, quoted=watch,
        serves=lambda model: any(info.id == model for info in balancer.models()),
        takeover_after_s=jobs.takeover_after_s, last_patience_s=jobs.job_timeout_s,
        weighting=jobs.assignment_weighting,
    )

    async def head() -> int:
        return int(await chain.w3.eth.block_number)

    gate = JobGate(ctx.ledger, ctx, assigner, watch, patience_s=jobs.job_timeout_s, head=head,
                   services=(book,))
    return gate, book


def price_quotes_from_chain(book: OfferBook, quoter: Quoter, operator: str) -> None:
    """Quotes are priced from our offer as the manager holds it (what a client can check with
    ``quotePrice``), followed on every change; the configured prices only until it is read."""

    def follow(current: OfferBook) -> None:
        offer = current.offer_of(operator)
        if offer is not None and offer.models:
            quoter.offer = offer

    book.on_change(follow)


async def run_daemon(settings: Settings, *, stop: asyncio.Event | None = None,
                     install_signals: bool = True) -> None:
    """Build the daemon from ``settings`` and run it until a signal (or ``stop``).

    Also serves the HTTP API in the same event loop unless ``settings.server.enabled`` is false;
    its ``GET /metrics`` then carries the job metrics and the chain figures too.
    """
    if settings.service_id is None:
        raise ValueError("run_daemon needs settings.service_id")
    traced = tracing.configure_tracing(settings.tracing)
    ctx = await Context.create(settings, with_chain=True)
    try:
        runner, api = await build_daemon(settings, ctx)
        operator = ctx.operator.address if ctx.operator else None
        log.info("daemon.starting", service_id=settings.service_id, max_concurrent=runner.max_concurrent,
                 dry_run=settings.dry_run)

        def ready() -> None:
            log.info("daemon.ready", operator=operator, http=api.url if api else None)

        runner.on_ready = ready
        await _run_until_stopped(runner.run(), runner.request_stop, stop=stop,
                                 install_signals=install_signals)
    finally:
        await ctx.close()
        if traced:  # flushes the last spans to the collector: off the event loop
            await asyncio.to_thread(tracing.shutdown_tracing)


async def serve_api(settings: Settings, *, on_ready: Callable[[RunningServer], None] | None = None) -> None:
    """The HTTP API alone (``serve``): the context's LLM side, served until a signal."""
    from blueprint.server import check_exposure, serve

    check_exposure(settings.server)  # before loading any model
    traced = tracing.configure_tracing(settings.tracing)
    ctx = await Context.create(settings, with_chain=False)
    try:
        await serve(ctx.balancer, settings.server, on_ready=on_ready)
    finally:
        await ctx.close()
        if traced:  # flushes the last spans to the collector: off the event loop
            await asyncio.to_thread(tracing.shutdown_tracing)


def _console_chain_view(settings: Settings, ctx: Context, chain_metrics: ChainMetrics) -> LedgerChainView:
    """The console's chain panel over this daemon's parts (the server sees only its Protocol)."""
    from blueprint.context.console_chain import LedgerChainView

    assert ctx.ledger is not None and ctx.chain is not None and settings.service_id is not None
    return LedgerChainView(ctx.ledger, settings.service_id, ctx.operator.address if ctx.operator else None,
                           ctx.chain.w3, settings.tangle_contract, chain_metrics=chain_metrics, txm=ctx.txm)


async def _run_until_stopped(main: Awaitable[None], request_stop: Callable[[], None], *,
                             stop: asyncio.Event | None, install_signals: bool) -> None:
    """Await ``main``; SIGINT/SIGTERM (when installed) and ``stop`` ask it to stop."""
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)
    relay = asyncio.create_task(_relay(stop, request_stop)) if stop is not None else None
    try:
        await main
    finally:
        if relay is not None:
            relay.cancel()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _relay(stop: asyncio.Event, request_stop: Callable[[], None]) -> None:
    await stop.wait()
    request_stop()


async def default_start_block(chain: ChainClient, service_id: int) -> int:
    """Where a fresh ledger starts scanning: the block where the service was activated when the
    chain tells us, else the current head (never miss jobs of the future; scan from 0 with
    ``jobs.start_block = 0`` for the past)."""
    head = int(await chain.w3.eth.block_number)
    try:
        service = await chain.call(chain.tangle.functions.getService(service_id))
    except Exception:
        return head
    created = int(service[2]) if len(service) > 2 and isinstance(service[2], int) else 0
    if created <= 0:
        return head
    return await _first_block_at_or_after(chain, created, head)


async def _first_block_at_or_after(chain: ChainClient, timestamp: int, head: int) -> int:
    """Binary search of the first block with ``timestamp >= timestamp`` (log2(head) headers):
    the service's activation block or an earlier one, never a later one."""
    lo, hi = 0, head
    while lo < hi:
        mid = (lo + hi) // 2
        block = await chain.w3.eth.get_block(mid)
        if int(block["timestamp"]) >= timestamp:
            hi = mid
        else:
            lo = mid + 1
    return lo
