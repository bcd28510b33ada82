"""Weighted: smooth weighted round robin (the nginx scheme) over static weights, or over the
inverse of each node's price so that cheaper nodes take proportionally more traffic.

Smooth WRR spreads a heavy node's turns between the others' (weights 5:1:1 give
a a b a c a a, not a a a a a b c), and its proportions are exact over every window of
``sum(weights)`` picks when the candidate set does not change.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy


class Weighted(Strategy):
    name = "weighted"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._current: dict[str, float] = {}

    def weight_of(self, view: NodeView) -> float:
        if self.settings.weight_source == "price":
            # A free node (price 0) is treated as the cheapest priced one would be, times 10,
            # rather than as infinitely attractive.
            return 1.0 / view.price if view.price > 0 else 10.0 * view.weight
        return view.weight

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        weights = {view.name: self.weight_of(view) for view in candidates}
        total = sum(weights.values())
        for name, weight in weights.items():
            self._current[name] = self._current.get(name, 0.0) + weight
        # Highest current weight wins; ties go to the name order so that results are reproducible.
        pick = max(candidates, key=lambda view: (self._current[view.name], view.name))
        self._current[pick.name] -= total
        return pick

    def forget(self, node: str) -> None:
        self._current.pop(node, None)
