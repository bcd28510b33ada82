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
        # One pass, no sort: the first name after the last pick, else the first name of all.
        last = self._last
        first = after = None
        for view in candidates:
            name = view.name
            if first is None or name < first.name:
                first = view
            if last is not None and name > last and (after is None or name < after.name):
                after = view
        pick = after or first
        assert pick is not None, "select() is never called without candidates"
        self._last = pick.name
        return pick
