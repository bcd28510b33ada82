"""A bounded prefix tree of recent prompts, one per node, for cache-aware routing.

Prompts are cut into fixed-size character chunks and stored as a trie of chunks (a compact
stand-in for a token radix tree: a match of k chunks means roughly the first k*chunk characters
are already in that node's KV cache). When the characters stored exceed the bound, the least
recently used leaves are evicted, the same policy a prefix cache on the backend follows, so the
tree mirrors what the node still has.

Eviction costs O(1) per chunk evicted, spread over the inserts that overflow the bound: the trie
nodes are kept in one recency order in which a node always comes before its ancestors (an insert
refreshes its path leaf first), so the least recent node is always a leaf. The earlier way,
a scan of the whole tree for its oldest leaves, stalled the event loop for tens of milliseconds
whenever new prompts had filled the bound again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class _Node:
    chunk: str
    parent: _Node | None
    children: dict[str, _Node] = field(default_factory=dict)


class PrefixTree:
    """``insert`` a prompt, ask ``match`` how many of a prompt's leading characters are known."""

    def __init__(self, *, chunk_chars: int = 16, max_chars: int = 2_000_000) -> None:
        self.chunk_chars = chunk_chars
        self.max_chars = max_chars
        self._root = _Node("", None)
        self._chars = 0
        #: Every node but the root, least recently used first; a node before its ancestors.
        self._recency: OrderedDict[_Node, None] = OrderedDict()

    @property
    def size_chars(self) -> int:
        return self._chars

    def _chunks(self, text: str) -> list[str]:
        size = self.chunk_chars
        return [text[i:i + size] for i in range(0, len(text), size)]

    def match(self, text: str) -> int:
        """Characters of ``text``'s prefix found in the tree (whole chunks)."""
        node = self._root
        matched = 0
        for chunk in self._chunks(text):
            child = node.children.get(chunk)
            if child is None:
                break
            matched += len(chunk)
            node = child
        return matched

    def insert(self, text: str) -> None:
        """Add ``text`` (or refresh it) as most recently used, then evict down to the bound."""
        node = self._root
        path = []
        for chunk in self._chunks(text):
            child = node.children.get(chunk)
            if child is None:
                child = _Node(chunk, node)
                node.children[chunk] = child
                self._chars += len(chunk)
            path.append(child)
            node = child
        recency = self._recency
        for child in reversed(path):  # the leaf first: each node ends up before its ancestors
            recency[child] = None
            recency.move_to_end(child)
        while self._chars > self.max_chars:
            self._evict_one()

    def _evict_one(self) -> None:
        """Remove the least recently used node, which is a leaf (see the module's docstring)."""
        leaf, _ = self._recency.popitem(last=False)
        parent = leaf.parent
        assert parent is not None and not leaf.children
        del parent.children[leaf.chunk]
        self._chars -= len(leaf.chunk)
