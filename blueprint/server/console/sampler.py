"""The console's charts: a task that reads the API's metric registry every few seconds and keeps
a short history of rates and percentiles.

Why a sampler and not the page scraping ``/metrics``: rates and percentiles need two readings,
the page would parse Prometheus text on every poll, and every open tab would pay for it. Here one
reading per period, off the request path, serves every tab; the per-request code is untouched.
Percentiles come from the histograms' bucket deltas over the period (linear within a bucket, as
Prometheus' ``histogram_quantile`` does), so they describe the last period, not all time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from blueprint.periodic import Periodic

log = structlog.get_logger(__name__)

#: The routes whose latency and time to first token are charted (not /v1/models or quotes).
INFERENCE_ROUTES = frozenset({"chat_completions", "completions", "embeddings"})
NO_MODEL = "-"

Buckets = dict[float, float]
_HISTOGRAMS = ("blueprint_http_time_to_first_token_seconds", "blueprint_http_request_duration_seconds")


@dataclass(slots=True)
class Reading:
    """Cumulative figures at one instant (what two readings are subtracted from)."""

    at: float
    requests: dict[str, float] = field(default_factory=dict)  # by model
    output_tokens: dict[str, float] = field(default_factory=dict)  # by model
    rejected_429: float = 0.0
    quotes_issued: float = 0.0
    quotes_refused: float = 0.0
    jobs_seen: float | None = None
    ttft: Buckets = field(default_factory=dict)
    latency: Buckets = field(default_factory=dict)
    cache: dict[str, tuple[float, float]] = field(default_factory=dict)  # node -> (hits, queries)


def read_registry(registry: CollectorRegistry, node_rows: Iterable[Mapping[str, Any]],
                  at: float) -> Reading:
    """One reading of the registry's counters and histograms, and the nodes' cache counters."""
    reading = Reading(at=at)
    for family in registry.collect():
        name = family.name
        if name == "blueprint_http_requests":
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                if labels.get("route") == "quote":
                    if labels.get("status") == "200":
                        reading.quotes_issued += sample.value
                    else:
                        reading.quotes_refused += sample.value
                    continue
                if labels.get("status") == "429":
                    reading.rejected_429 += sample.value
                model = labels.get("model", NO_MODEL)
                if model != NO_MODEL and labels.get("route") in INFERENCE_ROUTES:
                    reading.requests[model] = reading.requests.get(model, 0.0) + sample.value
        elif name == "blueprint_http_tokens":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("kind") == "completion":
                    model = sample.labels.get("model", NO_MODEL)
                    reading.output_tokens[model] = reading.output_tokens.get(model, 0.0) + sample.value
        elif name in _HISTOGRAMS:
            target = reading.ttft if name.startswith("blueprint_http_time") else reading.latency
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("route") in INFERENCE_ROUTES:
                    le = float(sample.labels["le"])
                    target[le] = target.get(le, 0.0) + sample.value
        elif name == "blueprint_jobs_seen":
            reading.jobs_seen = sum(s.value for s in family.samples if s.name.endswith("_total"))
    for row in node_rows:
        hits, queries = row.get("prefix_cache_hits"), row.get("prefix_cache_queries")
        if isinstance(hits, int | float) and isinstance(queries, int | float):
            reading.cache[str(row.get("name"))] = (float(hits), float(queries))
    return reading


def quantile(q: float, cumulative: Buckets) -> float | None:
    """The q-quantile of cumulative bucket counts (``le`` -> count), None without observations.
    Linear inside a bucket; the +Inf bucket answers with the largest finite bound."""
    bounds = sorted(cumulative)
    if not bounds:
        return None
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1] if not math.isinf(bounds[-1]) else lower_bound


def _delta(new: Buckets, old: Buckets) -> Buckets:
    return {le: max(0.0, count - old.get(le, 0.0)) for le, count in new.items()}


def _rate(new: float, old: float, seconds: float) -> float:
    return max(0.0, new - old) / seconds if seconds > 0 else 0.0


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class MetricsSampler:
    """Keeps ``points`` chart points, one per ``period_s``, from the registry and the nodes.

    Args:
        registry: the API's registry (HTTP metrics; under ``run`` the job metrics too).
        node_rows: the balancer's nodes as rows (their ``prefix_cache_*`` counters, where reported).
        queue_depth: requests waiting in the balancer's queues now.
        period_s: seconds between readings.
        points: history length per series.
    """

    def __init__(self, registry: CollectorRegistry, node_rows: Callable[[], Iterable[Mapping[str, Any]]],
                 queue_depth: Callable[[], int], *, period_s: float = 2.0, points: int = 180,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.node_rows = node_rows
        self.queue_depth = queue_depth
        self.period_s = period_s
        self.points = points
        self.clock = clock
        self._last: Reading | None = None
        self._t: deque[float] = deque(maxlen=points)
        self._scalars: dict[str, deque[float | None]] = {}
        self._keyed: dict[str, dict[str, deque[float | None]]] = {}
        self.totals: dict[str, float] = {}
        self._periodic = Periodic("console-sampler", self._sample, period_s, on_error=self._sample_failed)

    def sample(self) -> None:
        """Take one reading and append a point to every series (the first reading only primes)."""
        reading = read_registry(self.registry, self.node_rows(), self.clock())
        last, self._last = self._last, reading
        self.totals = {"quotes_issued": reading.quotes_issued, "quotes_refused": reading.quotes_refused,
                       "rejected_429": reading.rejected_429}
        if last is None:
            return
        seconds = reading.at - last.at
        self._t.append(round(reading.at, 3))
        ttft, latency = _delta(reading.ttft, last.ttft), _delta(reading.latency, last.latency)
        self._push("ttft_p50_s", _round(quantile(0.5, ttft)))
        self._push("ttft_p99_s", _round(quantile(0.99, ttft)))
        self._push("latency_p50_s", _round(quantile(0.5, latency)))
        self._push("latency_p99_s", _round(quantile(0.99, latency)))
        self._push("queue_depth", float(self.queue_depth()))
        self._push("rejected_429_per_s", _round(_rate(reading.rejected_429, last.rejected_429, seconds)))
        jobs = None
        if reading.jobs_seen is not None:
            jobs = _round(_rate(reading.jobs_seen, last.jobs_seen or 0.0, seconds))
        self._push("jobs_per_s", jobs)
        self._push_keyed("requests_per_s", {
            model: _round(_rate(count, last.requests.get(model, 0.0), seconds))
            for model, count in reading.requests.items()})
        self._push_keyed("output_tokens_per_s", {
            model: _round(_rate(count, last.output_tokens.get(model, 0.0), seconds), 2)
            for model, count in reading.output_tokens.items()})
        rates: dict[str, float | None] = {}
        for node, (hits, queries) in reading.cache.items():
            old_hits, old_queries = last.cache.get(node, (0.0, 0.0))
            asked = queries - old_queries
            rates[node] = _round((hits - old_hits) / asked) if asked > 0 else None
        self._push_keyed("prefix_cache_hit_rate", rates)

    def _push(self, name: str, value: float | None) -> None:
        series = self._scalars.get(name)
        if series is None:
            series = self._scalars[name] = self._padded()
        series.append(value)

    def _push_keyed(self, name: str, values: Mapping[str, float | None]) -> None:
        group = self._keyed.setdefault(name, {})
        for key in values.keys() - group.keys():
            group[key] = self._padded()
        for key, series in group.items():
            series.append(values.get(key))

    def _padded(self) -> deque[float | None]:
        """A new series, filled with gaps up to the current point (its value is appended next)."""
        return deque([None] * (len(self._t) - 1), maxlen=self.points)

    def series(self) -> dict[str, Any]:
        """Every series aligned on ``t`` (seconds since the epoch); None marks no data."""
        return {
            "t": list(self._t),
            **{name: list(values) for name, values in self._scalars.items()},
            **{name: {key: list(values) for key, values in group.items()}
               for name, group in self._keyed.items()},
        }

    # --- the task ----------------------------------------------------------------------------

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _sample(self) -> None:
        self.sample()

    @staticmethod
    def _sample_failed(exc: Exception) -> None:  # a broken collector must not stop the charts
        log.warning("console.sample_failed", error=str(exc) or type(exc).__name__)
