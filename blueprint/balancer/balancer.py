"""The balancer: the one way the HTTP server and the job handlers reach an LLM.

For every request it (1) admits it (a free slot on some node now, else a place in the model's
bounded FIFO queue, else :class:`OverloadedError` at once: :mod:`blueprint.balancer.admission`),
(2) lets the model's strategy pick a node among the healthy candidates with a free slot, (3) runs
it, and (4) on a retryable failure
before the first token retries on another node with jittered exponential backoff. After the
first streamed chunk a failure is surfaced as :class:`StreamInterruptedError`, never retried and
never turned into a silently short answer.

Health comes from three sources: failures seen on requests (passive), an active
``health_check`` loop, and a circuit breaker per node that turns both into "selectable or not".
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from blueprint import tracing
from blueprint.balancer import routing, traced
from blueprint.balancer.admission import Admission
from blueprint.balancer.breaker import BreakerState, CircuitBreaker
from blueprint.balancer.node import NodeState
from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies import RoutingRequest, Strategy, create_strategy
from blueprint.errors import (
    BackendError,
    BackendTimeoutError,
    BlueprintError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyNodeError,
    OverloadedError,
    StreamInterruptedError,
)
from blueprint.llm.client import LlmClient, NodeMetrics
from blueprint.llm.config import NodeConfig
from blueprint.llm.raw import ChunkSink, RawChunk
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
ChunkT = TypeVar("ChunkT", ChatCompletionChunk, CompletionChunk)

DEFAULT_MAX_QUEUE = NodeConfig.model_fields["max_queue"].default


class _CountingSink:
    """A relayed stream's chunks counted as ``_stream`` counts those it yields, on their way to
    the consumer's sink (:class:`blueprint.llm.raw.ChunkSink`)."""

    __slots__ = ("inner", "span", "tokens", "usage_tokens")

    def __init__(self, span: tracing.Span | None) -> None:
        self.inner: ChunkSink | None = None
        self.span = span
        self.tokens = 0
        self.usage_tokens: int | None = None

    def send(self, chunk: RawChunk) -> None:
        self.tokens += 1
        usage = chunk.usage
        if usage is not None:
            self.usage_tokens = usage.completion_tokens
            if self.span is not None:
                traced.record_response(self.span, chunk)
        assert self.inner is not None
        self.inner.send(chunk)

    def flush(self) -> bool:
        assert self.inner is not None
        return self.inner.flush()

    def end(self) -> None:
        assert self.inner is not None
        self.inner.end()


def _as_backend_error(exc: BaseException, node: str) -> BlueprintError:
    if isinstance(exc, BlueprintError):
        return exc
    if isinstance(exc, TimeoutError):
        return BackendTimeoutError(f"Node {node!r} did not answer in time.")
    return BackendError(f"Node {node!r} failed: {type(exc).__name__}: {exc}")


def _counts_against_node(exc: BlueprintError) -> bool:
    """Failures that say the node is unwell (not the request, not a momentary overload)."""
    return exc.retryable and not isinstance(exc, OverloadedError)


class Balancer:
    """Routes requests over LLM nodes. Construct, ``await start()``, use, ``await close()``."""

    def __init__(self, clients: Sequence[LlmClient], settings: BalancerSettings | None = None, *,
                 node_configs: Mapping[str, NodeConfig] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BalancerSettings()
        self._clock = clock
        self._rng = random.Random(self.settings.seed)
        self._nodes: dict[str, NodeState] = {}
        #: model -> the nodes that serve it (rebuilt when nodes or their models change, so the
        #: hot path never scans every node to find the ones serving a model).
        self._by_model: dict[str, list[NodeState]] = {}
        self._strategies: dict[str, Strategy] = {}
        self._admission = Admission(self._serving, self._try_assign, self._retry_after,
                                    self.settings.queue_timeout_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        configs = dict(node_configs or {})
        for client in clients:
            self._register(client, configs.get(client.name))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every client, then the health-check and backend-metrics loops."""
        if self._started:
            return
        self._started = True
        await asyncio.gather(*(self._start_node(node) for node in list(self._nodes.values())))
        self._tasks = [
            asyncio.create_task(self._health_loop(), name="balancer-health"),
            asyncio.create_task(self._metrics_loop(), name="balancer-metrics"),
        ]

    async def close(self) -> None:
        """Stop the loops, fail queued requests, close every client."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        self._admission.fail_all(NoHealthyNodeError("The balancer is shutting down."))
        await asyncio.gather(*(self._close_client(node) for node in self._nodes.values()))

    async def __aenter__(self) -> Balancer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ introspection

    def nodes(self) -> list[NodeState]:
        return list(self._nodes.values())

    def node(self, name: str) -> NodeState:
        try:
            return self._nodes[name]
        except KeyError:
            raise InvalidRequestError(f"No node named {name!r}.", code="node_not_found") from None

    def models(self) -> list[ModelInfo]:
        """One entry per model id over all nodes; ``is_ready`` when any serving node is usable."""
        result: dict[str, ModelInfo] = {}
        ready: dict[str, bool] = {}
        for node in self._nodes.values():
            usable = not node.draining and node.breaker.state is not BreakerState.OPEN
            for info in self._client_models(node):
                if info.id not in result:
                    result[info.id] = info
                ready[info.id] = ready.get(info.id, False) or usable
        return [info.model_copy(update={"is_ready": ready[model]}) for model, info in result.items()]

    def model_info(self, model: str) -> ModelInfo:
        for info in self.models():
            if info.id == model:
                return info
        raise ModelNotFoundError(model)

    def strategy_for(self, model: str) -> Strategy:
        strategy = self._strategies.get(model)
        if strategy is None:
            strategy = create_strategy(self.settings.strategy_for(model), self.settings,
                                       rng=random.Random(self._rng.random()))
            self._strategies[model] = strategy
        return strategy

    def describe(self) -> dict[str, Any]:
        """A JSON-ready picture for an admin GET: strategies, queues and every node's state."""
        models = sorted({model for node in self._nodes.values() for model in node.models})
        return {
            "strategy": self.settings.strategy,
            "models": {
                model: {
                    "strategy": self.settings.strategy_for(model),
                    "queued": self._admission.queued(model),
                    "queue_capacity": self._admission.capacity(model),
                    "nodes": sorted(n.name for n in self._nodes.values() if model in n.models),
                }
                for model in models
            },
            "nodes": [node.describe() for node in self._nodes.values()],
        }

    # ------------------------------------------------------------------ requests

    def _wants_text(self, model: str) -> bool:
        """Whether the model's strategy matches on prompt text (only then is it built)."""
        return self.strategy_for(model).uses_prompt_text

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        route = routing.for_chat(request, with_text=self._wants_text(request.model))
        return await self._unary(route, lambda client: client.chat(request), "chat")

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        route = routing.for_chat(request, with_text=self._wants_text(request.model))
        return self._stream(route, lambda client: client.chat_stream(request), "chat")

    async def complete(self, request: CompletionRequest) -> Completion:
        route = routing.for_completion(request, with_text=self._wants_text(request.model))
        return await self._unary(route, lambda client: client.complete(request), "text_completion")

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        route = routing.for_completion(request, with_text=self._wants_text(request.model))
        return self._stream(route, lambda client: client.complete_stream(request), "text_completion")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self._unary(routing.for_embedding(request), lambda client: client.embed(request),
                                 "embeddings")

    # ------------------------------------------------------------------ scale-out

    async def add_node(self, client: LlmClient, config: NodeConfig | None = None) -> None:
        """Add a node while running; it takes requests once started."""
        name = config.node_name if config is not None else client.name
        if name in self._nodes:
            raise InvalidRequestError(f"A node named {name!r} already exists.", code="node_exists")
        node = self._register(client, config)
        if self._started:
            await self._start_node(node)
        log.info("node_added", node=name, models=sorted(node.models))
        self._dispatch_all()

    async def drain_node(self, name: str, *, wait: bool = True) -> None:
        """Stop sending new requests to the node; with ``wait``, return when its in-flight
        requests have finished (or after ``drain_timeout_s``)."""
        node = self.node(name)
        node.draining = True
        log.info("node_draining", node=name, in_flight=node.in_flight)
        if wait and node.in_flight > 0:
            node.idle = node.idle or asyncio.Event()
            try:
                await asyncio.wait_for(node.idle.wait(), self.settings.drain_timeout_s)
            except TimeoutError:
                log.warning("node_drain_timeout", node=name, in_flight=node.in_flight)
        self._dispatch_all()

    async def remove_node(self, name: str) -> None:
        """Drain the node, then forget it and close its client."""
        await self.drain_node(name, wait=True)
        node = self._nodes.pop(name, None)
        if node is None:
            return
        self._reindex()
        for strategy in self._strategies.values():
            strategy.forget(name)
        await self._close_client(node)
        log.info("node_removed", node=name)
        self._dispatch_all()

    # ------------------------------------------------------------------ internals: nodes

    def _register(self, client: LlmClient, config: NodeConfig | None) -> NodeState:
        name = config.node_name if config is not None else client.name
        limit = config.max_batch_size if config is not None else client.capabilities().max_concurrency
        node = NodeState(
            name=name, client=client, config=config,
            breaker=CircuitBreaker(self.settings.health, name=name, clock=self._clock,
                                   rng=random.Random(self._rng.random())),
            limit=max(1, limit),
            max_queue=config.max_queue if config is not None else DEFAULT_MAX_QUEUE,
            alpha=self.settings.latency.alpha,
        )
        node.models = frozenset(info.id for info in self._client_models(node))
        self._nodes[name] = node
        self._reindex()
        return node

    def _reindex(self) -> None:
        by_model: dict[str, list[NodeState]] = {}
        for node in self._nodes.values():
            for model in node.models:
                by_model.setdefault(model, []).append(node)
        self._by_model = by_model

    def _refresh_models(self, node: NodeState) -> None:
        """Re-read the node's model list (after a start or a health check) and its cached facts."""
        models = frozenset(info.id for info in self._client_models(node))
        node.invalidate()
        if models != node.models:
            node.models = models
            self._reindex()

    @staticmethod
    def _client_models(node: NodeState) -> list[ModelInfo]:
        try:
            return node.client.models()
        except Exception as exc:  # a node that cannot list its models serves none for now
            log.warning("node_models_failed", node=node.name, error=str(exc))
            return []

    async def _start_node(self, node: NodeState) -> None:
        try:
            await node.client.start()
        except Exception as exc:
            log.error("node_start_failed", node=node.name, error=str(exc))
            node.breaker.trip(f"start failed: {exc}")
            return
        node.started = True
        self._refresh_models(node)

    async def _close_client(self, node: NodeState) -> None:
        try:
            await node.client.close()
        except Exception as exc:
            log.warning("node_close_failed", node=node.name, error=str(exc))

    # ------------------------------------------------------------------ internals: admission

    def _serving(self, model: str) -> list[NodeState]:
        """The nodes serving ``model`` (the index itself: callers must not mutate it)."""
        return self._by_model.get(model, [])

    def _candidates(self, model: str, exclude: frozenset[str]) -> list[NodeState]:
        return [node for node in self._serving(model) if node.selectable() and node.name not in exclude]

    def _try_assign(self, request: RoutingRequest, exclude: frozenset[str],
                    priority: bool = False) -> NodeState | None:
        model = request.model
        # a node's slots open to the request: all for a chain job, the unreserved ones for HTTP
        share = 0.0 if priority else self.settings.reserved_job_share
        free = [node for node in self._by_model.get(model, ())
                if node.in_flight < (node.limit - int(node.limit * share) if share else node.limit)
                and node.selectable() and (not exclude or node.name not in exclude)]
        if not free:
            return None
        strategy = self._strategies.get(model) or self.strategy_for(model)
        if len(free) == 1:  # nothing to rank: no views to build
            node = free[0]
            strategy.chosen_alone(node.name, request)
        else:
            name = strategy.select([node.view(model) for node in free], request).name
            node = next(node for node in free if node.name == name)
        node.in_flight += 1
        node.requests_total += 1
        node.breaker.on_dispatch()
        return node

    def _retry_after(self, model: str) -> float:
        """A hint for the client: about how long until a queue place frees up."""
        latencies = [
            (node.ttft_s or 0.0) + (node.tpot_s or 0.0) * self.settings.latency.expected_tokens
            for node in self._serving(model)
        ]
        known = [value for value in latencies if value > 0]
        return round(min(30.0, max(0.5, min(known) if known else 1.0)), 2)

    async def _acquire(self, request: RoutingRequest, exclude: frozenset[str]) -> NodeState:
        """A node with a slot reserved for this request (:meth:`Admission.acquire`)."""
        if self._closed:
            raise NoHealthyNodeError("The balancer is shut down.")
        return await self._admission.acquire(request, exclude, self._release)

    def _release(self, node: NodeState) -> None:
        node.in_flight = max(0, node.in_flight - 1)
        if node.in_flight == 0 and node.idle is not None:
            node.idle.set()
        self._admission.dispatch(node.models)

    def _dispatch_all(self) -> None:
        self._admission.dispatch()

    # ------------------------------------------------------------------ internals: running

    async def _backoff(self, attempt: int) -> None:
        knobs = self.settings.retry
        delay = min(knobs.backoff_max_s, knobs.backoff_base_s * (2 ** (attempt - 1)))
        await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))

    def _on_failure(self, node: NodeState, exc: BlueprintError) -> None:
        if _counts_against_node(exc):
            node.errors_total += 1
            node.breaker.record_failure(exc.message)
            if node.breaker.state is BreakerState.OPEN:
                self._dispatch_all()
        else:
            # The node answered (an invalid request, a 429): it is alive; free a half-open probe.
            node.breaker.release_probe()
        log.warning("node_request_failed", node=node.name, error=exc.message, retryable=exc.retryable)

    async def _next_node(self, request: RoutingRequest, tried: set[str],
                         last_error: BlueprintError | None, attempt: int) -> NodeState:
        if attempt:
            await self._backoff(attempt)
        if tracing.active():
            return await traced.admit_and_route(self, request, tried, last_error, attempt)
        return await self._admit(request, tried, last_error)

    async def _admit(self, request: RoutingRequest, tried: set[str],
                     last_error: BlueprintError | None) -> NodeState:
        try:
            return await self._acquire(request, frozenset(tried))
        except (NoHealthyNodeError, OverloadedError):
            if last_error is not None:  # nothing left to retry on: report the real failure
                raise last_error from None
            raise

    async def _unary(self, request: RoutingRequest, call: Callable[[LlmClient], Awaitable[T]],
                     operation: str = "chat") -> T:
        tried: set[str] = set()
        last_error: BlueprintError | None = None
        timeout = self.settings.retry.request_timeout_s
        traced_now = tracing.active()
        for attempt in range(self.settings.retry.max_attempts):
            # the common case first, without the coroutines of the queue: a free slot now
            node = None if attempt or traced_now or self._closed else self._admission.admit_at_once(request)
            if node is None:
                node = await self._next_node(request, tried, last_error, attempt)
            tried.add(node.name)
            if attempt:
                node.retries_total += 1
            started = time.perf_counter()
            span = traced.generation_span(operation, request, node, attempt) if traced_now \
                else tracing.NO_SPAN
            try:
                if timeout is None:  # no Timeout object and timer per request when unbounded
                    result = await call(node.client)
                else:
                    async with asyncio.timeout(timeout):
                        result = await call(node.client)
            except asyncio.CancelledError as cancelled:
                tracing.end_span(span, error=cancelled)
                node.breaker.release_probe()
                raise
            except Exception as raw:
                exc = _as_backend_error(raw, node.name)
                tracing.end_span(span, error=exc)
                self._on_failure(node, exc)
                if not exc.retryable:
                    raise exc from (None if exc is raw else raw)
                last_error = exc
                continue
            else:
                if span is not tracing.NO_SPAN:
                    traced.record_response(span, result)
                    tracing.end_span(span)
                node.breaker.record_success()
                usage = getattr(result, "usage", None)
                if getattr(usage, "completion_tokens", 0) <= 1:
                    # With at most one token the whole latency is time to first token.
                    node.observe_latency(time.perf_counter() - started, None)
                return result
            finally:
                self._release(node)
        assert last_error is not None
        raise last_error

    async def _stream(self, request: RoutingRequest,
                      open_stream: Callable[[LlmClient], AsyncIterator[ChunkT]],
                      operation: str = "chat") -> AsyncIterator[ChunkT]:
        tried: set[str] = set()
        last_error: BlueprintError | None = None
        first_timeout = self.settings.retry.first_token_timeout_s
        for attempt in range(self.settings.retry.max_attempts):
            node = await self._next_node(request, tried, last_error, attempt)
            tried.add(node.name)
            if attempt:
                node.retries_total += 1
            started = time.perf_counter()
            span = traced.generation_span(operation, request, node, attempt) if tracing.active() \
                else tracing.NO_SPAN
            span_error: BaseException | None = None
            stream = open_stream(node.client)
            verdict = False
            try:
                try:
                    if first_timeout is None:
                        first = await anext(stream)
                    else:
                        async with asyncio.timeout(first_timeout):
                            first = await anext(stream)
                except StopAsyncIteration:
                    verdict = True
                    node.breaker.record_success()
                    return
                except Exception as raw:
                    exc = _as_backend_error(raw, node.name)
                    span_error = exc
                    verdict = True
                    self._on_failure(node, exc)
                    if not exc.retryable:
                        raise exc from (None if exc is raw else raw)
                    last_error = exc
                    continue
                first_at = time.perf_counter()
                recording = span.is_recording()
                if recording:
                    traced.first_chunk(span, first_at - started)
                tokens = 1
                usage_tokens: int | None = None
                counter: _CountingSink | None = None
                asend = getattr(stream, "asend", None)
                sink = yield first
                try:
                    while True:
                        if sink is not None and asend is not None:  # relayed: counted on the way
                            if counter is None:
                                counter = _CountingSink(span if recording else None)
                            counter.inner = sink
                            chunk = await asend(counter)
                        else:
                            chunk = await anext(stream)
                        tokens += 1
                        if chunk.usage is not None:
                            usage_tokens = chunk.usage.completion_tokens
                            if recording:
                                traced.record_response(span, chunk)
                        sink = yield chunk
                except StopAsyncIteration:
                    pass
                except Exception as raw:
                    exc = _as_backend_error(raw, node.name)
                    span_error = exc
                    verdict = True
                    self._on_failure(node, exc)
                    raise StreamInterruptedError(
                        f"Node {node.name!r} failed after the stream started: {exc.message}"
                    ) from raw
                if counter is not None:
                    tokens += counter.tokens
                    if counter.usage_tokens is not None:
                        usage_tokens = counter.usage_tokens
                verdict = True
                node.breaker.record_success()
                done = time.perf_counter()
                produced = usage_tokens if usage_tokens is not None else tokens
                tpot = (done - first_at) / (produced - 1) if produced > 1 else None
                node.observe_latency(first_at - started, tpot)
                return
            finally:
                self._release(node)  # free the slot first: the consumer may have gone away
                tracing.end_span(span, error=span_error)
                if not verdict:
                    node.breaker.release_probe()
                try:
                    await stream.aclose()  # type: ignore[attr-defined]
                except Exception as exc:
                    log.debug("stream_close_failed", node=node.name, error=str(exc))
        assert last_error is not None
        raise last_error

    # ------------------------------------------------------------------ internals: loops

    async def _check_node(self, node: NodeState) -> None:
        breaker = node.breaker
        state = breaker.state
        if node.draining or state is BreakerState.OPEN or not breaker.available():
            return
        breaker.on_dispatch()
        try:
            if not node.started:
                await node.client.start()
                node.started = True
            async with asyncio.timeout(self.settings.health.check_timeout_s):
                ok = await node.client.health_check()
        except asyncio.CancelledError:
            breaker.release_probe()
            raise
        except Exception as exc:
            ok = False
            breaker.last_error = f"health check: {exc}"
        self._refresh_models(node)  # readiness and model info may have changed
        if ok:
            if state is BreakerState.HALF_OPEN:
                breaker.record_success()
            else:
                breaker.release_probe()
        else:
            node.errors_total += 1
            breaker.record_failure(breaker.last_error or "health check failed")

    async def check_health(self) -> None:
        """One round of active health checks over all nodes (the loop calls this)."""
        await asyncio.gather(*(self._check_node(node) for node in list(self._nodes.values())))
        self._dispatch_all()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health.check_interval_s)
            try:
                await self.check_health()
            except Exception as exc:  # keep checking whatever one round did
                log.error("health_round_failed", error=str(exc))

    async def refresh_metrics(self) -> None:
        """Pull backend-reported metrics (vLLM ``/metrics``) from clients that offer them."""
        for node in list(self._nodes.values()):
            refresh = getattr(node.client, "refresh_backend_metrics", None)
            if refresh is None:
                continue
            try:
                result = refresh()
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                log.debug("backend_metrics_failed", node=node.name, error=str(exc))
                continue
            if isinstance(result, NodeMetrics):
                node.backend = result
            node.invalidate()

    async def _metrics_loop(self) -> None:
        while True:
            await self.refresh_metrics()
            await asyncio.sleep(self.settings.health.metrics_interval_s)
