"""Cache aware (after SGLang's gateway): send a prompt where its prefix is already cached.

Each node has a :class:`PrefixTree` of the prompts recently sent to it, bounded like the node's
own prefix cache (``max_chars_per_node``: set it near what the node's KV cache holds, so that a
prefix the backend has evicted stops counting as cached here too). When the longest match covers
at least ``match_threshold`` of the prompt, the least loaded node holding that match wins, unless
*that node* is overloaded: its load is more than ``balance_abs_threshold`` above the least loaded
candidate's and more than ``balance_rel_threshold`` times it. Only then does the least loaded
node take the request (the emptiest cache among equally loaded ones) and become a second home
of the hot prefix.

With ``placement = "prefix_hash"`` a prefix no node holds goes to the node a rendezvous hash of
its first ``hash_prefix_chars`` characters names (unless that node is overloaded), instead of the
least loaded one: several server processes, each with its own trees, then agree on every prefix's
home without sharing state (``server.workers`` turns it on).

Judging the holder's load rather than the whole pool's (SGLang switches every request to least
loaded while any node is overloaded) matters: one slow, busy node must not send the traffic of
prefixes cached on idle nodes to nodes that do not hold them, where each request pays a full
prefill and, by spreading every prefix everywhere, evicts the others from the backends' caches.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from blueprint.balancer.prefix_tree import PrefixTree
from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy, least_loaded_fair


class CacheAware(Strategy):
    name = "cache_aware"
    uses_prompt_text = True

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

    def overloaded(self, node: NodeView, candidates: Sequence[NodeView]) -> bool:
        """Whether ``node`` is so much busier than the least loaded candidate that the cache
        hit is not worth the wait."""
        knobs = self.settings.cache_aware
        low = min(view.load for view in candidates)
        return node.load - low > knobs.balance_abs_threshold and node.load > knobs.balance_rel_threshold * low

    def imbalanced(self, candidates: Sequence[NodeView]) -> bool:
        """Whether the most loaded candidate is overloaded (see :meth:`overloaded`)."""
        return self.overloaded(max(candidates, key=lambda view: view.load), candidates)

    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        self._turn += 1
        ordered = sorted(candidates, key=lambda view: view.name)
        text = request.prompt_text
        matches = [self.tree(view.name).match(text) if text else 0 for view in ordered]
        best = max(matches)
        pick = None
        if best > 0 and best / len(text) >= self.settings.cache_aware.match_threshold:
            holders = [view for view, matched in zip(ordered, matches, strict=True) if matched == best]
            pick = least_loaded_fair(holders, self._turn)
            if self.overloaded(pick, ordered):
                pick = None
        if pick is None and self.settings.cache_aware.placement == "prefix_hash" and text:
            pick = self.home(ordered, text)
            if self.overloaded(pick, ordered):
                pick = None
        if pick is None:
            # The least loaded node; among equally loaded ones, the one holding the least (so
            # distinct prefixes spread evenly over the caches). A partial match below the
            # threshold is not preferred: it is mostly boilerplate every prompt shares.
            def rank(view: NodeView) -> tuple[float, int, int]:
                return (view.load / max(1, view.limit), view.load, self.tree(view.name).size_chars)

            ranked = [rank(view) for view in ordered]
            low = min(ranked)
            pick = least_loaded_fair([v for v, r in zip(ordered, ranked, strict=True) if r == low],
                                     self._turn)
        self.record(pick.name, text)
        return pick

    def home(self, candidates: Sequence[NodeView], text: str) -> NodeView:
        """The candidate a rendezvous hash of the prompt's start names: the same in every process
        (no per-process salt), and only 1/n of the prefixes move when a node comes or goes."""
        key = text[:self.settings.cache_aware.hash_prefix_chars].encode()
        return max(candidates, key=lambda view: hashlib.blake2b(
            key, digest_size=8, key=view.name.encode()[:64]).digest())

    def chosen_alone(self, node: str, request: RoutingRequest) -> None:
        self.record(node, request.prompt_text)

    def forget(self, node: str) -> None:
        self._trees.pop(node, None)
