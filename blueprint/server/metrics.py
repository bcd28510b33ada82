"""Prometheus metrics of the HTTP API.

Each app owns its own ``CollectorRegistry`` (two servers in one process never clash); other
collectors join it with :meth:`ServerMetrics.include` (``run`` adds the daemon's job and chain
metrics, :mod:`blueprint.context.metrics`). The hot path
only touches pre-bound children, cached per (route, model). Per request it adds to plain
integers (requests by status, tokens in and out, requests in flight) that a collector registered
ahead of the families folds into the prometheus children whenever the registry is read (a scrape,
the console's sampler), so a reader always sees every finished request. The latency and TTFT
histograms are plain bucket counts too (one ``bisect`` and two additions per observation),
reported as histogram families by a collector: a prometheus ``observe`` took two locked
increments and a Python loop over the buckets. A prometheus ``inc`` is four Python calls and a
lock: seven of them were a tenth of the gateway's own work per request. Per-node gauges are read from
``balancer.nodes()`` at scrape time by a custom collector, so routing never pays for them.
Everything here runs on the event loop (scrapes included), so the plain integers need no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from blueprint.llm.types import Usage

#: Model label for requests that never named a served model (bounded label cardinality).
NO_MODEL = "-"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: Fields of a node row exported as ``blueprint_node_<field>`` gauges.
NODE_GAUGES: tuple[tuple[str, str], ...] = (
    ("in_flight", "Requests the node is running."),
    ("queued", "Requests waiting for the node."),
    ("healthy", "1 when the node passes its health checks."),
    ("draining", "1 while the node finishes its work before removal."),
    ("tokens_per_second", "Output tokens per second over the recent window."),
    ("ttft_s", "Moving average of time to first token."),
    ("time_per_output_token_s", "Moving average of time per output token."),
    ("kv_cache_usage", "KV-cache use in [0, 1] where the engine reports it."),
    ("requests_total", "Requests the node has served."),
    ("errors_total", "Requests the node failed."),
)


class _Buckets:
    """One histogram series as plain counts: per bucket (not cumulative; the last is +Inf), and
    the sum. Observed on the event loop only, like everything here: no lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: "le"
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class RouteMetrics:
    """Pre-bound children for one (route, model), and the counts not yet folded into them."""

    __slots__ = ("_completion_tokens", "_model", "_pending", "_prompt_tokens", "_requests",
                 "_requests_family", "_route", "_tokens_in", "_tokens_out", "latency", "ttft")

    def __init__(self, owner: ServerMetrics, route: str, model: str) -> None:
        self._route, self._model = route, model
        #: Time to the end of the response, and to the first streamed token (None without a model).
        self.latency = _Buckets(_LATENCY_BUCKETS)
        self.ttft: _Buckets | None = None
        self._requests: dict[int, Any] = {}
        self._requests_family: Counter = owner.requests
        #: Requests finished by status, and tokens, since the registry was last read.
        self._pending: dict[int, int] = {}
        self._prompt_tokens = self._completion_tokens = 0
        if model == NO_MODEL:  # failed before any model was served: no token or TTFT series
            self._tokens_in = self._tokens_out = None
        else:
            self.ttft = _Buckets(_TTFT_BUCKETS)
            self._tokens_in = owner.tokens.labels(model, "prompt")
            self._tokens_out = owner.tokens.labels(model, "completion")

    def finished(self, status: int, elapsed_s: float) -> None:
        pending = self._pending
        pending[status] = pending.get(status, 0) + 1
        self.latency.observe(elapsed_s)

    def first_token(self, elapsed_s: float) -> None:
        if self.ttft is not None:
            self.ttft.observe(elapsed_s)

    def usage(self, usage: Usage | Any | None) -> None:
        if usage is None or self._tokens_in is None:
            return
        self._prompt_tokens += usage.prompt_tokens or 0
        self._completion_tokens += getattr(usage, "completion_tokens", 0) or 0

    def fold(self) -> None:
        """Add the pending counts to the prometheus children (before the registry is read)."""
        if self._pending:
            pending, self._pending = self._pending, {}
            for status, count in pending.items():
                child = self._requests.get(status)
                if child is None:
                    child = self._requests_family.labels(self._route, self._model, str(status))
                    self._requests[status] = child
                child.inc(count)
        if self._prompt_tokens and self._tokens_in is not None:
            self._tokens_in.inc(self._prompt_tokens)
        if self._completion_tokens and self._tokens_out is not None:
            self._tokens_out.inc(self._completion_tokens)
        self._prompt_tokens = self._completion_tokens = 0


class _Fold(Collector):
    """Registered first, so collected first: folds the pending counts into the children that
    the families collected after it report. Yields nothing of its own."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self._owner.fold()
        return iter(())


class _Histograms(Collector):
    """The latency and TTFT histogram families, from every route's plain bucket counts."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        routes = list(self._owner._routes.values())
        latency = HistogramMetricFamily(
            "blueprint_http_request_duration_seconds",
            "Time from request to the end of the response (whole stream).", labels=["route", "model"])
        ttft = HistogramMetricFamily("blueprint_http_time_to_first_token_seconds",
                                     "Time from request to the first streamed token.",
                                     labels=["route", "model"])
        for route in routes:
            labels = [route._route, route._model]
            latency.add_metric(labels, route.latency.cumulative(), route.latency.sum)
            if route.ttft is not None:
                ttft.add_metric(labels, route.ttft.cumulative(), route.ttft.sum)
        yield latency
        yield ttft


class _NodeCollector(Collector):
    """Per-node gauges read from the balancer when Prometheus scrapes."""

    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = list(self._rows())
        for field, doc in NODE_GAUGES:
            family = GaugeMetricFamily(f"blueprint_node_{field}", doc, labels=["node"])
            for row in rows:
                value = row.get(field)
                if isinstance(value, bool):
                    value = float(value)
                if isinstance(value, int | float):
                    family.add_metric([str(row.get("name"))], float(value))
            yield family


class ServerMetrics:
    """The API's metric families and the cache of their bound children."""

    def __init__(self, node_rows: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        r.register(_Fold(self))  # before the families it feeds
        #: Requests being served now (``blueprint_http_in_flight`` reads it at scrape time).
        self.in_flight_now = 0
        self.requests = Counter("blueprint_http_requests", "HTTP requests by route, model and status.",
                                ["route", "model", "status"], registry=r)
        r.register(_Histograms(self))
        self.tokens = Counter("blueprint_http_tokens", "Tokens in (prompt) and out (completion).",
                              ["model", "kind"], registry=r)
        self.in_flight = Gauge("blueprint_http_in_flight", "Requests being served now.", registry=r)
        self.in_flight.set_function(lambda: self.in_flight_now)
        #: SSE streams open now, and those still waiting for their first token: plain integers
        #: on the hot path (four gauge updates per stream took a lock each), read at scrape time.
        self.streams_now = 0
        self.waiting_first_token_now = 0
        Gauge("blueprint_http_streams_open", "SSE streams open now.",
              registry=r).set_function(lambda: self.streams_now)
        self.stream_failures = Counter(
            "blueprint_http_stream_failures",
            "Streams that ended in an SSE error event after their headers were sent, by stage "
            "(mid_stream: after the first token, which OpenRouter counts against uptime).",
            ["route", "model", "stage", "code"], registry=r)
        Gauge("blueprint_http_waiting_first_token", "Streams still waiting for their first token (queued).",
              registry=r).set_function(lambda: self.waiting_first_token_now)
        if node_rows is not None:
            r.register(_NodeCollector(node_rows))

    def include(self, collector: Collector) -> None:
        """Serve ``collector`` (another registry, or a custom collector) on this ``/metrics`` too:
        the daemon adds its job and chain metrics this way. A name already served raises
        ``ValueError`` (``DuplicateTimeseries``) at once, not at the first scrape."""
        self.registry.register(collector)

    def route(self, route: str, model: str = NO_MODEL) -> RouteMetrics:
        key = (route, model)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = RouteMetrics(self, route, model)
        return found

    def fold(self) -> None:
        """Fold every route's pending counts into its children (reading the registry does)."""
        for route in list(self._routes.values()):
            route.fold()

    def render(self) -> bytes:
        return generate_latest(self.registry)
