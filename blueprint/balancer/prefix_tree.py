"""A bounded prefix tree of recent prompts, one per node, for cache-aware routing.

Prompts are cut into fixed-size character chunks and stored as a trie of chunks (a compact
stand-in for a token radix tree: a match of k chunks means roughly the first k*chunk characters
are already in that node's KV cache). Every node of the trie remembers when it was last used;
when the characters stored exceed the bound, the least recently used leaves are evicted, the
same policy a prefix cache on the backend follows, so the tree mirrors what the node still has.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class _Node:
    chunk: str
    parent: _Node | None
    children: dict[str, _Node] = field(default_factory=dict)
    last_used: int = 0


class PrefixTree:
    """``insert`` a prompt, ask ``match`` how many of a prompt's leading characters are known."""

    def __init__(self, *, chunk_chars: int = 16, max_chars: int = 2_000_000) -> None:
        self.chunk_chars = chunk_chars
        self.max_chars = max_chars
        self._root = _Node("", None)
        self._chars = 0
        self._tick = 0

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
        self._tick += 1
        node = self._root
        for chunk in self._chunks(text):
            child = node.children.get(chunk)
            if child is None:
                child = _Node(chunk, node)
                node.children[chunk] = child
                self._chars += len(chunk)
            child.last_used = self._tick
            node = child
        if self._chars > self.max_chars:
            self._evict(int(self.max_chars * 0.9))

    def _evict(self, target: int) -> None:
        """Remove least recently used leaves until at most ``target`` characters remain.
        Batched (down to 90% of the bound) so the cost of a scan is spread over many inserts."""
        heap: list[tuple[int, int, _Node]] = []
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                heap.append((node.last_used, id(node), node))
        heapq.heapify(heap)
        while heap and self._chars > target:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.chunk]
            self._chars -= len(leaf.chunk)
            if parent is not self._root and not parent.children:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))
