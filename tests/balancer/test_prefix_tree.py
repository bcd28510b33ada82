"""The prefix tree against a plain model of what it stands for, and its cost in Python steps.

The model (``ReferenceTree``) stores every prefix of every inserted prompt with the time of the
last insert through it, and evicts the least recently used leaf character (the deepest on a tie)
until the bound holds: a character-level mirror of a backend's LRU prefix cache, obviously right
and far too slow to route with. The radix tree must give the same matches and the same size after
every insert, evictions included. Costs are counted as lines of Python executed, not
timed (a timed bound flakes on a busy box).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import pytest

from blueprint.balancer.prefix_tree import PrefixTree


class ReferenceTree:
    """Every stored prefix -> the insert that last went through it."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.stamps: dict[str, int] = {}
        self.clock = 0

    def insert(self, text: str) -> None:
        self.clock += 1
        for end in range(1, len(text) + 1):
            self.stamps[text[:end]] = self.clock
        while len(self.stamps) > self.max_chars:
            parents = {prefix[:-1] for prefix in self.stamps}
            leaves = [prefix for prefix in self.stamps if prefix not in parents]
            del self.stamps[min(leaves, key=lambda prefix: (self.stamps[prefix], -len(prefix)))]

    def match(self, text: str) -> int:
        matched = 0
        while matched < len(text) and text[:matched + 1] in self.stamps:
            matched += 1
        return matched


def _prompts(rng: random.Random, count: int) -> list[str]:
    """Prompts over a small alphabet that share prefixes of every length: a few system prompts,
    then each prompt extends a random prefix of an earlier one (a chat's next turn, a shared
    document with a new question) or starts afresh."""
    prompts = ["".join(rng.choices("ab", k=rng.randint(0, 12))) for _ in range(3)]
    while len(prompts) < count:
        base = rng.choice(prompts)
        head = base[:rng.randint(0, len(base))]
        prompts.append(head + "".join(rng.choices("abc", k=rng.randint(0, 24))))
    return prompts


def _check_structure(tree: PrefixTree) -> None:
    """The radix tree's own invariants: non-empty edges keyed by their first character, parent
    links, the character count, and a recency order that holds every node once, each before its
    parent (so the least recently used node is always a leaf)."""
    order = {node: index for index, node in enumerate(tree._recency)}
    seen = 0
    chars = 0
    stack = [tree._root]
    while stack:
        node = stack.pop()
        for first, child in node.children.items():
            assert child.edge and child.edge[0] == first and child.parent is node
            if node is not tree._root:
                assert order[child] < order[node]
            seen += 1
            chars += len(child.edge)
            stack.append(child)
    assert seen == len(order) and chars == tree.size_chars


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_chars", [9, 60, 250])
def test_radix_tree_matches_the_reference_model_with_evictions(seed: int, max_chars: int) -> None:
    rng = random.Random(seed * 1000 + max_chars)
    tree, reference = PrefixTree(chunk_chars=1, max_chars=max_chars), ReferenceTree(max_chars)
    prompts = _prompts(rng, 160)
    for step, prompt in enumerate(prompts):
        heads = [other[:rng.randint(0, len(other))] for other in rng.sample(prompts, 2)]
        queries = [prompt, *rng.sample(prompts, 4), *heads]
        for query in queries:
            assert tree.match(query) == reference.match(query), (step, query)
        tree.insert(prompt)
        reference.insert(prompt)
        assert tree.size_chars == len(reference.stamps) <= max_chars
        _check_structure(tree)
    for query in prompts:
        assert tree.match(query) == reference.match(query)


@pytest.mark.parametrize("chunk_chars", [4, 16])
def test_matches_count_whole_chunks_unless_the_whole_prompt_is_known(chunk_chars: int) -> None:
    """``chunk_chars`` is the granularity of a match, as a backend's cache counts whole blocks; a
    prompt found in full (an exact repeat) counts in full, as it did in the chunk trie."""
    rng = random.Random(chunk_chars)
    tree, reference = PrefixTree(chunk_chars=chunk_chars, max_chars=400), ReferenceTree(400)
    prompts = _prompts(rng, 120)
    for prompt in prompts:
        tree.insert(prompt)
        reference.insert(prompt)
        for query in (prompt, *rng.sample(prompts, 5)):
            known = reference.match(query)
            assert tree.match(query) == (known if known == len(query) else known - known % chunk_chars)


def python_steps(call: Callable[[], object]) -> int:
    """Lines of Python that ``call()`` executes (in any module): the work done in Python, as
    opposed to inside C string operations."""
    steps = 0

    def count(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        nonlocal steps
        if event == "line":
            steps += 1
        return count

    previous = sys.gettrace()
    sys.settrace(count)
    try:
        call()
    finally:
        sys.settrace(previous)
    return steps


def _filled_tree(length: int) -> tuple[PrefixTree, str]:
    """A tree holding 8 system prompts of ``length // 2`` characters, each followed by 4 users'
    questions, and one more prompt that parts from a stored question halfway through it: the
    same branch points at every length."""
    rng = random.Random(3)

    def words(count: int) -> str:
        return "".join(rng.choices("abcdefgh ", k=count))

    tree = PrefixTree(chunk_chars=16, max_chars=100 * length)
    systems = [letter + words(length // 2 - 1) for letter in "ABCDEFGH"]
    questions = [str(user) + words(length // 2 - 1) for user in range(4)]
    for system in systems:
        for question in questions:
            tree.insert(system + question)
    return tree, systems[5] + questions[1][:length // 4] + "Z" + words(length // 4)


def _request(tree: PrefixTree, prompt: str) -> None:
    """What routing does with a tree per request: match, and insert when it picks that node."""
    tree.match(prompt)
    tree.insert(prompt)
    tree.match(prompt)


def test_match_and_insert_do_not_grow_with_the_prompt_length() -> None:
    """A request costs Python steps per branch point on its path, not per 16 characters: the
    chunk trie took ~6,000 loop turns for a 100k-character prompt, so four matches and an insert
    were milliseconds of event-loop time per request."""
    costs = {}
    for length in (1_000, 100_000):
        tree, prompt = _filled_tree(length)
        shared = length // 2 + length // 4  # the system prompt and half a question
        assert tree.match(prompt) == shared - shared % 16
        costs[length] = python_steps(partial(_request, tree, prompt))
        assert tree.match(prompt) == len(prompt)
    # finding where the prompt parts from an edge is a bisection: a few more lines per doubling of
    # the length (~50 from 1k to 100k); nothing grows like length / 16
    assert costs[100_000] <= costs[1_000] + 80, costs


def test_eviction_is_spread_over_inserts_not_a_scan() -> None:
    """At its bound the tree evicts, per insert, no more than the insert added, in steps that do
    not grow with the tree: a tree ten times larger costs each insert about the same. A walk of
    the tree for its oldest leaves (the old way) stalled the event loop for tens of ms every few
    hundred thousand characters of new prompts, a p99 spike for every request in flight."""
    worst = {}
    for bound in (40_000, 400_000):
        tree = PrefixTree(chunk_chars=16, max_chars=bound)
        rng = random.Random(7)
        prompts = ["".join(rng.choices("abcdefghij", k=4000)) for _ in range(3 * bound // 4000)]  # unique
        steps = []
        for prompt in prompts:
            before = tree.size_chars
            steps.append(python_steps(partial(tree.insert, prompt)))
            assert tree.size_chars >= before  # it evicted no more than the insert added
        assert tree.size_chars == bound
        assert tree.match(prompts[-1]) == 4000 and tree.match(prompts[0]) == 0
        worst[bound] = max(steps[len(prompts) // 2:])  # inserts that evict
    assert worst[400_000] <= 2 * worst[40_000], worst  # a deeper path; a scan would be 10x
