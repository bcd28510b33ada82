"""A bounded radix tree of recent prompts, one per node, for cache-aware routing.

A match of k characters means roughly the first k characters of the prompt are already in that
node's KV cache (a character-level stand-in for the backend's token blocks). When the characters
stored exceed the bound, the least recently used characters go first, from the leaves, the same
policy a prefix cache on the backend follows, so the tree mirrors what the node still has.

Each edge holds a whole run of characters between two branch points, and walking compares an
edge with the prompt in one C-level string operation (``str.startswith``; a bisection over slices
finds where they part). So ``match`` and ``insert`` take Python steps per branch point on the
prompt's path, not per character or chunk: a prompt of 100k characters that shares a long system
prompt costs about what a short one does. (The chunk trie before it took a dict lookup and a
recency update per 16 characters: 1-5 ms of event-loop time per request at OpenRouter's prompt
lengths with four nodes.)

Every edge's characters were last used by the same insert (an insert that ends or parts inside an
edge splits it there), so recency is kept per edge. The edges are kept in one recency order in
which an edge always comes before its ancestors (an insert refreshes its path leaf first), so the
least recent one is always a leaf: eviction trims or drops it in O(1), and the nodes it drops were
created by earlier inserts (at most two each), so it costs O(1) amortised per insert. The earlier
way, a scan of the whole tree for its oldest leaves, stalled the event loop for tens of
milliseconds whenever new prompts had filled the bound again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class _Node:
    #: The characters on the edge from the parent to this node (never empty but at the root).
    edge: str
    parent: _Node | None
    #: Children by the first character of their edge.
    children: dict[str, _Node] = field(default_factory=dict)


def _common_prefix_length(edge: str, text: str, start: int) -> int:
    """How many leading characters of ``edge`` equal ``text[start:]``'s: one C comparison when the
    whole edge matches, else a bisection that compares each half once (O(len) characters, O(log
    len) Python steps)."""
    if text.startswith(edge, start):
        return len(edge)
    low, high = 0, min(len(edge) - 1, len(text) - start)  # edge[:low] matches; the answer <= high
    while low < high:
        middle = (low + high + 1) // 2
        if text.startswith(edge[low:middle], start + low):
            low = middle
        else:
            high = middle - 1
    return low


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

    def match(self, text: str) -> int:
        """Characters of ``text``'s prefix found in the tree, in whole chunks of ``chunk_chars`` (a
        backend caches whole blocks), or all of them when the whole of ``text`` is found."""
        node = self._root
        matched = 0
        end = len(text)
        while matched < end:
            child = node.children.get(text[matched])
            if child is None:
                break
            edge = child.edge
            if not text.startswith(edge, matched):
                matched += _common_prefix_length(edge, text, matched)
                break
            matched += len(edge)
            node = child
        if matched >= end:
            return end
        return matched - matched % self.chunk_chars

    def insert(self, text: str) -> None:
        """Add ``text`` (or refresh it) as most recently used, then evict down to the bound."""
        node = self._root
        path: list[_Node] = []
        done = 0
        end = len(text)
        while done < end:
            child = node.children.get(text[done])
            if child is None:
                break
            shared = _common_prefix_length(child.edge, text, done)
            if shared < len(child.edge):  # the text ends or parts inside this edge
                child = self._split(child, shared)
            if path and len(node.children) == 1:  # both used by this insert, node only through child:
                path.pop()  # one edge holds them
                self._absorb_parent(child)
            path.append(child)
            node = child
            done += shared
        if done < end:
            rest = text[done:]
            self._chars += len(rest)
            if path and not node.children:  # a leaf, now used all along: one longer edge
                node.edge += rest
            else:
                leaf = _Node(rest, node)
                node.children[rest[0]] = leaf
                path.append(leaf)
        recency = self._recency
        for used in reversed(path):  # the leaf first: each node ends up before its ancestors
            recency[used] = None
            recency.move_to_end(used)
        while self._chars > self.max_chars:
            self._evict(self._chars - self.max_chars)

    def _split(self, child: _Node, length: int) -> _Node:
        """Cut ``child``'s edge after ``length`` characters; return the new node above the cut,
        which takes ``child``'s place (its recency entry is made by the insert)."""
        parent = child.parent
        assert parent is not None and 0 < length < len(child.edge)
        head = _Node(child.edge[:length], parent)
        parent.children[head.edge[0]] = head
        child.edge = child.edge[length:]
        child.parent = head
        head.children[child.edge[0]] = child
        return head

    def _absorb_parent(self, child: _Node) -> None:
        """Merge ``child``'s parent, whose only child it is, into ``child``: both were just used by
        the same insert, so one edge holds them (``child`` keeps its children: O(1))."""
        parent = child.parent
        assert parent is not None and parent.parent is not None and len(parent.children) == 1
        grandparent = parent.parent
        child.edge = parent.edge + child.edge
        child.parent = grandparent
        grandparent.children[child.edge[0]] = child
        del self._recency[parent]

    def _evict(self, excess: int) -> None:
        """Drop up to ``excess`` characters from the least recently used node, which is a leaf
        (see the module's docstring): trim its edge's tail, or remove it whole."""
        leaf = next(iter(self._recency))
        assert not leaf.children and leaf.parent is not None
        if len(leaf.edge) > excess:
            leaf.edge = leaf.edge[:-excess]
            self._chars -= excess
            return
        del self._recency[leaf]
        del leaf.parent.children[leaf.edge[0]]
        self._chars -= len(leaf.edge)
