"""One node as the balancer sees it: the client, its breaker, its slots and our own counters.

The figures a strategy reads (:class:`NodeView`) merge what we count (requests we have in flight
on the node, TTFT and time per output token we measured) with what the node or its backend
reports (vLLM's running/waiting requests and KV-cache use), so that traffic that reaches a
shared backend by other paths still shows as load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from blueprint.balancer.breaker import BreakerState, CircuitBreaker
from blueprint.balancer.strategies.base import NodeView
from blueprint.llm.client import LlmClient, NodeMetrics
from blueprint.llm.config import NodeConfig

#: How long the load a node's client and backend report is reused between picks. Our own
#: in-flight count is always live; this only bounds how often ``client.metrics()`` (a snapshot
#: with a copy) is taken on the hot path, so at high request rates it is not taken per request.
REPORTED_LOAD_TTL_S = 0.05


def _price(config: NodeConfig | None) -> float:
    if config is None:
        return 0.0
    try:
        return float(config.pricing.prompt) + float(config.pricing.completion)
    except ValueError:
        return 0.0


@dataclass(eq=False)
class NodeState:
    """Live state of one node (``Balancer.nodes()`` returns these; read them, do not mutate)."""

    name: str
    client: LlmClient
    config: NodeConfig | None
    breaker: CircuitBreaker
    limit: int
    max_queue: int
    alpha: float = 0.2
    draining: bool = False
    started: bool = False
    #: Set when a draining node's last in-flight request ends.
    idle: asyncio.Event | None = None
    #: Requests of ours running on the node (slots taken).
    in_flight: int = 0
    requests_total: int = 0
    errors_total: int = 0
    retries_total: int = 0
    ttft_s: float | None = None
    tpot_s: float | None = None
    latency_samples: int = 0
    backend: NodeMetrics | None = None
    models: frozenset[str] = field(default_factory=frozenset)
    #: Per model: (weight, price, context_length, features), which change only when the node's
    #: model info does (start, health checks); see :meth:`invalidate`.
    _static: dict[str | None, tuple[float, float, int | None, frozenset[str]]] = field(
        default_factory=dict, repr=False)
    #: (in_flight, queued, ttft_s, tpot_s) reported by the client and backend (ours merged in
    #: where we have figures), and when it was read.
    _reported: tuple[int, int, float | None, float | None] = (0, 0, None, None)
    _reported_at: float | None = None

    @property
    def health(self) -> BreakerState:
        return self.breaker.state

    def has_slot(self) -> bool:
        return self.in_flight < self.limit

    def selectable(self) -> bool:
        """Healthy enough for a new request (ignoring slots)."""
        return not self.draining and self.breaker.available()

    def observe_latency(self, ttft_s: float | None, tpot_s: float | None) -> None:
        """Fold one request's timings into the moving averages (kept apart on purpose)."""
        if ttft_s is not None:
            self.ttft_s = self._ewma(self.ttft_s, ttft_s)
            self.latency_samples += 1
        if tpot_s is not None:
            self.tpot_s = self._ewma(self.tpot_s, tpot_s)

    def _ewma(self, old: float | None, value: float) -> float:
        return value if old is None else (1 - self.alpha) * old + self.alpha * value

    def metrics(self) -> NodeMetrics:
        """The client's snapshot merged with our counters and the backend's report."""
        try:
            reported = self.client.metrics()
        except Exception:  # a broken metrics() must not break routing
            reported = NodeMetrics()
        backend = self.backend
        if backend is not None:
            reported.in_flight = max(reported.in_flight, backend.in_flight)
            reported.queued = max(reported.queued, backend.queued)
            if backend.kv_cache_usage is not None:
                reported.kv_cache_usage = backend.kv_cache_usage
        reported.in_flight = max(reported.in_flight, self.in_flight)
        if self.ttft_s is not None:
            reported.ttft_s = self.ttft_s
        if self.tpot_s is not None:
            reported.time_per_output_token_s = self.tpot_s
        reported.requests_total = max(reported.requests_total, self.requests_total)
        reported.errors_total = max(reported.errors_total, self.errors_total)
        return reported

    def invalidate(self) -> None:
        """Forget cached model info and reported load (after a start, a health check or a
        backend-metrics refresh), so the next view reads them again."""
        self._static.clear()
        self._reported_at = None

    def _static_for(self, model: str | None) -> tuple[float, float, int | None, frozenset[str]]:
        cached = self._static.get(model)
        if cached is not None:
            return cached
        context_length = None
        features: set[str] = set()
        try:
            features.update(self.client.capabilities().features())
            if model is not None:
                info = self.client.model_info(model)
                context_length = info.context_length
                features.update(info.supported_features)
        except Exception:  # unknown model info: treat as unconstrained
            pass
        if self.config is not None and self.config.context_length is not None:
            context_length = self.config.context_length
        weight = self.config.weight if self.config is not None else 1.0
        cached = (weight, _price(self.config), context_length, frozenset(features))
        self._static[model] = cached
        return cached

    def _reported_load(self) -> tuple[int, int, float | None, float | None]:
        now = time.monotonic()
        at = self._reported_at
        if at is None or now - at > REPORTED_LOAD_TTL_S:
            m = self.metrics()
            self._reported = (m.in_flight, m.queued, m.ttft_s, m.time_per_output_token_s)
            self._reported_at = now
        return self._reported

    def view(self, model: str | None = None) -> NodeView:
        """The strategy's snapshot: our live in-flight count (or more, when the client or its
        backend reports more), queued requests, and the cached static facts of the node."""
        weight, price, context_length, features = self._static_for(model)
        in_flight, queued, ttft_s, tpot_s = self._reported_load()
        return NodeView(
            self.name, max(in_flight, self.in_flight), queued, self.limit, weight, price,
            context_length, features,
            self.ttft_s if self.ttft_s is not None else ttft_s,
            self.tpot_s if self.tpot_s is not None else tpot_s,
            self.latency_samples,
        )

    def describe(self) -> dict[str, Any]:
        metrics = self.metrics()
        return {
            "name": self.name,
            "engine": self.config.engine if self.config is not None else type(self.client).__name__,
            "models": sorted(self.models),
            "health": self.health.value,
            "draining": self.draining,
            "in_flight": self.in_flight,
            "limit": self.limit,
            "max_queue": self.max_queue,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "ttft_s": self.ttft_s,
            "time_per_output_token_s": self.tpot_s,
            "backend_queued": metrics.queued,
            "kv_cache_usage": metrics.kv_cache_usage,
            "prefix_cache_hits": metrics.prefix_cache_hits,
            "prefix_cache_queries": metrics.prefix_cache_queries,
            "last_error": self.breaker.last_error,
            "retry_at": self.breaker.retry_at,
        }
