"""Capability based: only nodes that can serve the request as asked (context length fits the
prompt estimate plus the tokens asked for, features such as tools or JSON mode), then the least
loaded of those.

When no candidate fits, the least loaded candidate gets the request anyway: the estimate of the
prompt size is rough, and the node answers with the precise error (context length, unsupported
feature) that the client should see.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy, least_loaded_fair


def fits(view: NodeView, request: RoutingRequest) -> bool:
    """Whether the node can take the request by what it advertises."""
    if not request.features <= view.features:
        return False
    if view.context_length is None:
        return True
    return request.prompt_tokens + (request.max_tokens or 0) <= view.context_length


class CapabilityBased(Strategy):
    name = "capability"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._turn = 0

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        self._turn += 1
        able = [view for view in candidates if fits(view, request)] or list(candidates)
        return least_loaded_fair(sorted(able, key=lambda view: view.name), self._turn)
