"""One node as the balancer sees it: the client, its breaker, its slots and our own counters.

The figures a strategy reads (:class:`NodeView`) merge what we count (requests we have in flight
on the node, TTFT and time per output token we measured) with what the node or its backend
reports (vLLM's running/waiting requests and KV-cache use), so that traffic that reaches a
shared backend by other paths still shows as load.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from blueprint.balancer.breaker import BreakerState, CircuitBreaker
from blueprint.balancer.strategies.base import NodeView
from blueprint.llm.client import LlmClient, NodeMetrics
from blueprint.llm.config import NodeConfig


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

    def view(self, model: str | None = None) -> NodeView:
        metrics = self.metrics()
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
        return NodeView(
            name=self.name,
            in_flight=metrics.in_flight,
            queued=metrics.queued,
            limit=self.limit,
            weight=self.config.weight if self.config is not None else 1.0,
            price=_price(self.config),
            context_length=context_length,
            features=frozenset(features),
            ttft_s=metrics.ttft_s,
            tpot_s=metrics.time_per_output_token_s,
            samples=self.latency_samples,
        )

    def describe(self) -> dict[str, Any]:
        metrics = self.metrics()
        return {
            "name": self.name,
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
            "last_error": self.breaker.last_error,
            "retry_at": self.breaker.retry_at,
        }
