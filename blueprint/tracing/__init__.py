"""OpenTelemetry tracing: off by default, on with ``[tracing] otlp_endpoint``.

One trace per HTTP request and per job; spans for admission, routing, the engine call (time to
first chunk and generation), result encoding, and the transaction's send and confirmation, with
the GenAI semantic-convention attribute names (:mod:`blueprint.tracing.attributes`).

Why the module-level switch: the request path is measured in microseconds, so when tracing is
off a call site must pay one global read and nothing else. :func:`span` then returns
:data:`NO_SPAN`, a shared object whose methods do nothing, and callers build attribute dicts only
``if active()``. The OpenTelemetry packages are imported only when tracing is switched on (extra
``otel``), so a node that never traces never loads them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from blueprint.errors import BlueprintError
from blueprint.tracing.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

AttributeValue = str | bool | int | float | list[str]


class Span(Protocol):
    """What call sites use of a span (an OpenTelemetry span, or :data:`NO_SPAN`)."""

    def set_attribute(self, key: str, value: AttributeValue) -> Any: ...
    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> Any: ...
    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Any: ...
    def record_exception(self, exception: BaseException) -> Any: ...
    def is_recording(self) -> bool: ...
    def end(self, end_time: int | None = None) -> Any: ...


class _NoSpan:
    """The span of a disabled tracer: a context manager and a span that do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        pass

    def record_exception(self, exception: BaseException) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def end(self, end_time: int | None = None) -> None:
        pass


NO_SPAN = _NoSpan()

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def active() -> bool:
    """Whether spans are recorded (call sites skip building attributes otherwise)."""
    return _tracer is not None


def span(name: str, attributes: Mapping[str, AttributeValue] | None = None, *, kind: str = "internal") -> Any:
    """A context manager that makes a new span current for its block (``NO_SPAN`` when off).

    ``kind`` is ``internal``, ``server``, ``client`` or ``consumer``. Exceptions leaving the block are
    recorded on the span and set its status to error (OpenTelemetry's default)."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes, kind=_kind(kind))


def span_in(name: str, context: Any, attributes: Mapping[str, AttributeValue] | None = None, *,
            kind: str = "internal") -> Any:
    """Like :func:`span`, under an explicit parent ``context`` (a caller's extracted
    ``traceparent``) instead of the current one."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    return tracer.start_as_current_span(name, context=context, attributes=attributes, kind=_kind(kind))


def start_span(name: str, attributes: Mapping[str, AttributeValue] | None = None, *, kind: str = "internal",
               start_time_s: float | None = None, parent: Span | None = None,
               start_time_ns: int | None = None) -> Span:
    """A span that is *not* made current: for spans that live across ``yield``s of a stream
    (a current span there would be detached in another context), or that are written after the
    fact from recorded timestamps (``start_time_s``: a ``time.time()`` value). End it with
    :func:`end_span`. Its parent is ``parent`` when given, else the current span."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    start = start_time_ns if start_time_s is None else int(start_time_s * 1e9)
    context = None
    if parent is not None and parent.is_recording():
        from opentelemetry.trace import set_span_in_context

        context = set_span_in_context(parent)  # type: ignore[arg-type]
    return tracer.start_span(name, context=context, attributes=attributes, kind=_kind(kind),
                             start_time=start)


def end_span(span_: Span, *, end_time_s: float | None = None, error: BaseException | None = None) -> None:
    """End a span from :func:`start_span`, marking it failed when ``error`` is given."""
    if not span_.is_recording():
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span_.record_exception(error)
        span_.set_status(Status(StatusCode.ERROR, str(error)))  # type: ignore[attr-defined]
    span_.end(end_time=None if end_time_s is None else int(end_time_s * 1e9))


def set_error(span_: Any, error: BaseException) -> None:
    """Mark a span failed without an exception leaving its block (an error the caller handled)."""
    if span_.is_recording():
        from opentelemetry.trace import Status, StatusCode

        span_.record_exception(error)
        span_.set_status(Status(StatusCode.ERROR, str(error)))


def trace_id_hex(span_: Any) -> str | None:
    """The trace id of a recording span as 32 hex digits (for log lines), else None."""
    if not span_.is_recording():
        return None
    return format(span_.get_span_context().trace_id, "032x")


def now_s() -> float:
    """Wall-clock seconds, the clock spans are stamped with."""
    return time.time()


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "client": SpanKind.CLIENT,
            "consumer": SpanKind.CONSUMER}.get(kind, SpanKind.INTERNAL)


def use_provider(provider: TracerProvider | None) -> None:
    """Record spans through ``provider`` (tests pass one with an in-memory exporter); None: off."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("blueprint") if provider is not None else None


class TracingUnavailableError(BlueprintError):
    """Tracing is configured but the OpenTelemetry packages are not installed."""

    code = "tracing_unavailable"


def configure_tracing(settings: TracingSettings) -> bool:
    """Switch tracing on when ``settings.otlp_endpoint`` is set (else leave it off); True if on."""
    if settings.otlp_endpoint is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailableError(
            "tracing.otlp_endpoint is set but OpenTelemetry is not installed: "
            "pip install 'tangle-llm-blueprint[otel]' (or unset the endpoint).") from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    headers = {key: value.get_secret_value() for key, value in settings.headers.items()}
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, headers=headers or None,
                                timeout=settings.timeout_s)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    log.info("tracing.enabled", endpoint=settings.otlp_endpoint, sample_ratio=settings.sample_ratio)
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (on the way out); tracing is off afterwards."""
    provider = _provider
    use_provider(None)
    if provider is not None:
        try:
            provider.shutdown()
        except Exception as exc:  # a collector that is down must not fail the shutdown
            log.warning("tracing.shutdown_failed", error=str(exc))


__all__ = [
    "NO_SPAN",
    "Span",
    "TracingSettings",
    "TracingUnavailableError",
    "active",
    "configure_tracing",
    "end_span",
    "now_s",
    "set_error",
    "shutdown_tracing",
    "span",
    "span_in",
    "start_span",
    "trace_id_hex",
    "use_provider",
]
