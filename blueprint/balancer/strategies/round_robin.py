"""Round robin: each candidate in turn, whatever its load."""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy


class RoundRobin(Strategy):
    """Cycles by node name order rather than by list position, so that a node leaving or a busy
    node being skipped does not make its neighbour take two turns in a row."""

    name = "round_robin"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._last: str | None = None

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        ordered = sorted(candidates, key=lambda view: view.name)
        pick = ordered[0]
        if self._last is not None:
            pick = next((view for view in ordered if view.name > self._last), ordered[0])
        self._last = pick.name
        return pick
