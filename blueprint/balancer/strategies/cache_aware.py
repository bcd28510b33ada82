"""Cache aware (after SGLang's gateway): send a prompt where its prefix is already cached.

Each node has a :class:`PrefixTree` of the prompts recently sent to it. Unless the load is
imbalanced, the node with the longest prefix match wins when the match covers at least
``match_threshold`` of the prompt; otherwise the least loaded node takes the request (the one
holding the fewest cached characters among equally loaded ones), and so becomes the home of a new
prefix. When the load is imbalanced (max - min above an absolute
threshold and max above ``rel`` times min), the least loaded node wins whatever the cache says,
so one hot prefix cannot pile onto one node.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blueprint.balancer.prefix_tree import PrefixTree
from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy, least_loaded_fair


class CacheAware(Strategy):
    name = "cache_aware"

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._trees: dict[str, PrefixTree] = {}
        self._turn = 0

    def tree(self, node: str) -> PrefixTree:
        tree = self._trees.get(node)
        if tree is None:
            knobs = self.settings.cache_aware
            tree = PrefixTree(chunk_chars=knobs.chunk_chars, max_chars=knobs.max_chars_per_node)
            self._trees[node] = tree
        return tree

    def record(self, node: str, prompt: str) -> None:
        """Remember that ``prompt`` went to ``node`` (its KV cache now holds it)."""
        if prompt:
            self.tree(node).insert(prompt)

    def imbalanced(self, candidates: Sequence[NodeView]) -> bool:
        knobs = self.settings.cache_aware
        loads = [view.load for view in candidates]
        high, low = max(loads), min(loads)
        return high - low > knobs.balance_abs_threshold and high > knobs.balance_rel_threshold * low

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        self._turn += 1
        ordered = sorted(candidates, key=lambda view: view.name)
        pick = None
        if request.prompt_text and not self.imbalanced(ordered):
            matches = {view.name: self.tree(view.name).match(request.prompt_text) for view in ordered}
            best = max(matches.values())
            if best > 0 and best / len(request.prompt_text) >= self.settings.cache_aware.match_threshold:
                pick = least_loaded_fair([v for v in ordered if matches[v.name] == best], self._turn)
        if pick is None:
            # A new prefix goes to the least loaded node; among equally loaded ones, to the one
            # holding the least (so distinct prefixes spread evenly over the caches).
            key = [(v.load / max(1, v.limit), v.load) for v in ordered]
            lightest = [v for v, k in zip(ordered, key, strict=True) if k == min(key)]
            smallest = min(self.tree(v.name).size_chars for v in lightest)
            pick = least_loaded_fair([v for v in lightest if self.tree(v.name).size_chars == smallest],
                                     self._turn)
        self.record(pick.name, request.prompt_text)
        return pick

    def forget(self, node: str) -> None:
        self._trees.pop(node, None)
