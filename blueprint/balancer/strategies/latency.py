"""Latency based: the lowest estimated latency for *this* request.

estimate = TTFT + TPOT * expected output tokens, with TTFT and time per output token kept as
separate moving averages (dividing a whole latency by the token count, as some routers do,
punishes short answers and favours nodes that happened to get long ones). The estimate grows
with the node's current load, so that a fast node is not buried under everything.

New nodes are explored, not blindly preferred: a node with fewer than ``explore_requests``
observations is given the best known estimate (optimistic) only while it has no request of its
own in flight, so it gets a few probes one at a time and is then judged by what it measured.
With a small probability ``epsilon`` a random candidate is picked so that estimates of nodes
that lost favour do not go stale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy


class LatencyBased(Strategy):
    name = "latency"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._turn = 0

    def base_estimate(self, view: NodeView, request: RoutingRequest) -> float | None:
        """Idle-node latency in seconds, or None when the node has no figures yet."""
        if view.ttft_s is None:
            return None
        tokens = request.max_tokens or self.settings.latency.expected_tokens
        return view.ttft_s + (view.tpot_s or 0.0) * tokens

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        knobs = self.settings.latency
        self._turn += 1
        ordered = sorted(candidates, key=lambda view: view.name)
        if len(ordered) > 1 and self.rng.random() < knobs.epsilon:
            return self.rng.choice(ordered)
        explore = [
            view for view in ordered
            if view.samples < knobs.explore_requests and view.in_flight == 0
        ]
        if explore:
            return explore[self._turn % len(explore)]
        known = {view.name: self.base_estimate(view, request) for view in ordered}
        figures = [value for value in known.values() if value is not None]
        # A node with no figures that is not being explored (its probe still runs) is assumed
        # as slow as the slowest known one: neither preferred nor starved.
        fallback = max(figures) if figures else 1.0

        def score(view: NodeView) -> float:
            base = known[view.name]
            base = fallback if base is None else base
            return base * (1.0 + knobs.load_penalty * view.load / max(1, view.limit))

        best = min(score(view) for view in ordered)
        tied = [view for view in ordered if score(view) == best]
        return tied[self._turn % len(tied)]
