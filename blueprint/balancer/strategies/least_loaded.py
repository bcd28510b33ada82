"""Least loaded: the node with the fewest requests in flight plus queued (relative to its slot
count), ties broken by rotation."""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy, least_loaded_fair


class LeastLoaded(Strategy):
    name = "least_loaded"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._turn = 0

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        self._turn += 1
        return least_loaded_fair(sorted(candidates, key=lambda view: view.name), self._turn)
