"""Power of two choices: two random candidates, the less loaded wins. Nearly as good as least
loaded while not herding every balancer instance onto the same node."""

from __future__ import annotations

from collections.abc import Sequence

from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy


class PowerOfTwo(Strategy):
    name = "power_of_two"

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        return first if first.load <= second.load else second
