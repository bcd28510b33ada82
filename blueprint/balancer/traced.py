"""The balancer's spans: admission (the wait for a slot), routing (which node, which strategy,
why) and the engine call (generation, time to first chunk, tokens).

Only reached when :func:`blueprint.tracing.active` is true: the balancer's hot path checks that
one flag and otherwise never enters this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blueprint import tracing
from blueprint.tracing import attributes as attr

if TYPE_CHECKING:
    from blueprint.balancer.balancer import Balancer
    from blueprint.balancer.node import NodeState
    from blueprint.balancer.strategies import RoutingRequest
    from blueprint.errors import BlueprintError


async def admit_and_route(balancer: Balancer, request: RoutingRequest, tried: set[str],
                          last_error: BlueprintError | None, attempt: int) -> NodeState:
    """``balancer._admit`` inside an admission span, with a routing span that says why."""
    model = request.model
    free = [node for node in balancer._serving(model)
            if node.in_flight < node.limit and node.selectable() and node.name not in tried]
    queue_depth = balancer._admission.queued(model)
    queued = queue_depth > 0 or not free
    with tracing.span("balancer.admission", {attr.REQUEST_MODEL: model, attr.QUEUE_DEPTH: queue_depth,
                                             attr.QUEUED: queued, attr.ATTEMPT: attempt}):
        node = await balancer._admit(request, tried, last_error)
        strategy = balancer.settings.strategy_for(model)
        with tracing.span("balancer.route", {
            attr.NODE: node.name, attr.STRATEGY: strategy, attr.ATTEMPT: attempt,
            attr.CANDIDATES: len(free), attr.ROUTE_REASON: _reason(strategy, free, queue_depth, queued,
                                                                   attempt, last_error),
        }):
            pass
    return node


def _reason(strategy: str, free: list[NodeState], queue_depth: int, queued: bool, attempt: int,
            last_error: BlueprintError | None) -> str:
    if queued:
        why = f"waited in the queue (depth {queue_depth} on arrival); {strategy} took the first free slot"
    elif len(free) == 1:
        why = f"the only candidate with a free slot ({free[0].name})"
    else:
        why = f"{strategy} picked among {len(free)} candidates with a free slot"
    if attempt:
        code = last_error.code if last_error is not None else "error"
        why = f"retry {attempt} after {code} on another node; {why}"
    return why


def generation_span(operation: str, request: RoutingRequest, node: NodeState, attempt: int) -> tracing.Span:
    """The engine call as a GenAI client span (``{operation} {model}``), not made current."""
    attributes: dict[str, tracing.AttributeValue] = {
        attr.OPERATION: operation, attr.REQUEST_MODEL: request.model, attr.NODE: node.name,
        attr.PROVIDER: node.config.engine if node.config is not None else attr.PROVIDER_NAME,
        attr.SYSTEM: attr.PROVIDER_NAME, attr.ATTEMPT: attempt,
    }
    if request.max_tokens is not None:
        attributes[attr.REQUEST_MAX_TOKENS] = request.max_tokens
    return tracing.start_span(f"{operation} {request.model}", attributes, kind="client")


def record_response(span: tracing.Span, result: Any) -> None:
    """Response model, id, finish reasons and token usage of a response or final chunk."""
    if not span.is_recording():
        return
    model = getattr(result, "model", None)
    if model:
        span.set_attribute(attr.RESPONSE_MODEL, str(model))
    rid = getattr(result, "id", None)
    if rid:
        span.set_attribute(attr.RESPONSE_ID, str(rid))
    reasons = [str(c.finish_reason) for c in getattr(result, "choices", None) or ()
               if getattr(c, "finish_reason", None)]
    if reasons:
        span.set_attribute(attr.RESPONSE_FINISH_REASONS, reasons)
    usage = getattr(result, "usage", None)
    if usage is not None:
        span.set_attribute(attr.USAGE_INPUT, int(getattr(usage, "prompt_tokens", 0) or 0))
        span.set_attribute(attr.USAGE_OUTPUT, int(getattr(usage, "completion_tokens", 0) or 0))


def first_chunk(span: tracing.Span, ttfc_s: float) -> None:
    """The time to first chunk: an attribute of the generation span and a child span of its own
    from the generation's start to now (so a trace view shows the wait as a bar)."""
    if not span.is_recording():
        return
    span.set_attribute(attr.RESPONSE_TTFC, ttfc_s)
    start_ns = getattr(span, "start_time", None)
    child = tracing.start_span("gen_ai.first_chunk", {attr.RESPONSE_TTFC: ttfc_s},
                               start_time_ns=start_ns if isinstance(start_ns, int) else None, parent=span)
    tracing.end_span(child)
