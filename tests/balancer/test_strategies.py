"""Table-driven picks for every strategy over plain NodeViews, and fairness over many picks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from blueprint.balancer import BalancerSettings, NodeView, RoutingRequest, create_strategy
from blueprint.balancer.prefix_tree import PrefixTree
from blueprint.balancer.strategies import STRATEGIES, CacheAware
from blueprint.errors import InvalidRequestError

REQ = RoutingRequest(model="m", prompt_text="hello", prompt_tokens=2, max_tokens=10)


def nodes(*loads: int, **extra: object) -> list[NodeView]:
    return [NodeView(name=f"n{i}", in_flight=load, **extra) for i, load in enumerate(loads)]


def pick(strategy: str, candidates: list[NodeView], request: RoutingRequest = REQ, **settings: object) -> str:
    return create_strategy(strategy, BalancerSettings.model_validate({"seed": 3, **settings})).select(
        candidates, request).name


@pytest.mark.parametrize(("candidates", "expected"), [
    (nodes(3, 1, 2), "n1"),
    (nodes(0, 5), "n0"),
    # load is relative to the node's slot count: 4 of 32 is lighter than 2 of 4
    ([NodeView("big", in_flight=4, limit=32), NodeView("small", in_flight=2, limit=4)], "big"),
    # queued requests count as load
    ([NodeView("a", in_flight=1, queued=5), NodeView("b", in_flight=3)], "b"),
])
def test_least_loaded_picks(candidates: list[NodeView], expected: str) -> None:
    assert pick("least_loaded", candidates) == expected


def test_least_loaded_ties_are_fair() -> None:
    strategy = create_strategy("least_loaded")
    counts = Counter(strategy.select(nodes(0, 0, 0, 5), REQ).name for _ in range(300))
    assert counts == {"n0": 100, "n1": 100, "n2": 100}


def test_round_robin_cycles_evenly_and_skips_missing_nodes() -> None:
    strategy = create_strategy("round_robin")
    picks = [strategy.select(nodes(0, 9, 0), REQ).name for _ in range(6)]
    assert picks == ["n0", "n1", "n2", "n0", "n1", "n2"]  # load ignored
    assert strategy.select(nodes(0, 0, 0), REQ).name == "n0"
    # n1 busy (not a candidate): n2 is next after n0, not n0 twice
    assert [strategy.select([n for n in nodes(0, 0, 0) if n.name != "n1"], REQ).name for _ in range(2)] \
        == ["n2", "n0"]
    counts = Counter(strategy.select(nodes(0, 0, 0, 0), REQ).name for _ in range(400))
    assert set(counts.values()) == {100}


@pytest.mark.parametrize(("request_", "expected"), [
    (RoutingRequest(model="m", prompt_tokens=100, max_tokens=100), "short"),  # fits both: less loaded
    (RoutingRequest(model="m", prompt_tokens=3000, max_tokens=500), "long"),  # only long fits
    (RoutingRequest(model="m", prompt_tokens=10, features=frozenset({"tools"})), "tools"),
    (RoutingRequest(model="m", prompt_tokens=10, features=frozenset({"tools", "json_mode"})), "tools"),
    # nothing fits: least loaded anyway (the node reports the precise error)
    (RoutingRequest(model="m", prompt_tokens=10**6), "short"),
])
def test_capability_picks(request_: RoutingRequest, expected: str) -> None:
    candidates = [
        NodeView("short", in_flight=0, context_length=2048),
        NodeView("long", in_flight=5, context_length=32768),
        NodeView("tools", in_flight=9, context_length=4096, features=frozenset({"tools", "json_mode"})),
    ]
    assert pick("capability", candidates, request_) == expected


def _lat(name: str, ttft: float | None, tpot: float | None, samples: int = 10, load: int = 0) -> NodeView:
    return NodeView(name, in_flight=load, ttft_s=ttft, tpot_s=tpot, samples=samples)


@pytest.mark.parametrize(("candidates", "max_tokens", "expected"), [
    # short answer: low TTFT wins; long answer: low time per token wins (kept apart)
    ([_lat("fast_start", 0.05, 0.05), _lat("fast_decode", 0.5, 0.01)], 2, "fast_start"),
    ([_lat("fast_start", 0.05, 0.05), _lat("fast_decode", 0.5, 0.01)], 500, "fast_decode"),
    # load raises the estimate
    ([_lat("a", 0.1, 0.01, load=16), _lat("b", 0.15, 0.01, load=0)], 10, "b"),
    # a new node with no figures and no request in flight is explored
    ([_lat("old", 0.1, 0.01), _lat("new", None, None, samples=0)], 10, "new"),
    # ... but while its probe runs it is not preferred
    ([_lat("old", 0.1, 0.01), _lat("new", None, None, samples=0, load=1)], 10, "old"),
    # after exploring, it is judged by what it measured
    ([_lat("old", 0.1, 0.01), _lat("new", 1.0, 0.1, samples=3)], 10, "old"),
])
def test_latency_picks(candidates: list[NodeView], max_tokens: int, expected: str) -> None:
    request = RoutingRequest(model="m", max_tokens=max_tokens)
    assert pick("latency", candidates, request, latency={"epsilon": 0.0}) == expected


def test_latency_epsilon_explores_sometimes() -> None:
    strategy = create_strategy("latency", BalancerSettings.model_validate(
        {"seed": 1, "latency": {"epsilon": 0.1}}))
    candidates = [_lat("fast", 0.1, 0.01), _lat("slow", 1.0, 0.1)]
    counts = Counter(strategy.select(candidates, REQ).name for _ in range(2000))
    assert 40 < counts["slow"] < 200


@pytest.mark.parametrize(("loads", "expected"), [((5, 1), "n1"), ((1, 5), "n0"), ((2, 2), None)])
def test_power_of_two_two_nodes(loads: tuple[int, int], expected: str | None) -> None:
    name = pick("power_of_two", nodes(*loads))
    assert expected is None or name == expected


def test_power_of_two_never_picks_the_most_loaded_of_many() -> None:
    strategy = create_strategy("power_of_two", BalancerSettings(seed=5))
    candidates = nodes(0, 1, 2, 3, 4, 100)
    counts = Counter(strategy.select(candidates, REQ).name for _ in range(1000))
    assert counts["n5"] == 0
    assert counts["n0"] > counts["n4"]


def test_weighted_proportions_and_smoothness() -> None:
    strategy = create_strategy("weighted")
    candidates = [NodeView("a", weight=5), NodeView("b", weight=1), NodeView("c", weight=1)]
    picks = [strategy.select(candidates, REQ).name for _ in range(7)]
    assert picks.count("a") == 5 and picks.count("b") == 1 and picks.count("c") == 1
    assert "aaa" not in "".join(picks)  # smooth: the heavy node's turns are spread out
    counts = Counter(strategy.select(candidates, REQ).name for _ in range(700))
    assert counts == {"a": 500, "b": 100, "c": 100}


def test_weighted_by_inverse_price() -> None:
    strategy = create_strategy("weighted", BalancerSettings(weight_source="price"))
    candidates = [NodeView("cheap", price=1e-6), NodeView("dear", price=3e-6)]
    counts = Counter(strategy.select(candidates, REQ).name for _ in range(400))
    assert counts == {"cheap": 300, "dear": 100}


def _cache(**knobs: object) -> CacheAware:
    strategy = create_strategy("cache_aware", BalancerSettings.model_validate(
        {"cache_aware": {"chunk_chars": 4, **knobs}}))
    assert isinstance(strategy, CacheAware)
    return strategy


SYSTEM = "You are a helpful assistant for the tangle network. " * 4


@pytest.mark.parametrize(("loads", "prompt", "expected"), [
    ((3, 0, 0), SYSTEM + "question one", "n0"),       # long match wins over load
    ((3, 0, 0), "something else entirely, no shared prefix", "n1 n2"),  # no match: least loaded
    ((20, 0, 0), SYSTEM + "question one", "n1 n2"),   # imbalanced (20-0 > 8, 20 > 1.5*0): least loaded
    ((6, 4, 4), SYSTEM + "question two", "n0"),       # small imbalance is tolerated
    ((3, 1, 0), "something else entirely, no shared prefix", "n2"),
])
def test_cache_aware_picks(loads: tuple[int, ...], prompt: str, expected: str) -> None:
    strategy = _cache()
    strategy.record("n0", SYSTEM + "an earlier question")
    strategy.record("n2", "unrelated prompt")
    request = RoutingRequest(model="m", prompt_text=prompt)
    assert strategy.select(nodes(*loads), request).name in expected.split()


def test_cache_aware_threshold_and_learning() -> None:
    strategy = _cache(match_threshold=0.8)
    strategy.record("n0", SYSTEM)
    # half of the prompt matches: below 0.8, so least loaded (n1)
    prompt = SYSTEM + "x" * len(SYSTEM)
    assert strategy.select(nodes(1, 0), RoutingRequest(model="m", prompt_text=prompt)).name == "n1"
    # the pick was recorded: the same prompt now follows n1 even when n1 is busier
    assert strategy.select(nodes(0, 2), RoutingRequest(model="m", prompt_text=prompt)).name == "n1"


def test_cache_aware_spreads_distinct_prefixes() -> None:
    strategy = _cache()
    homes = {}
    for group in range(8):
        prompt = f"system prompt number {group} " * 10
        homes[group] = strategy.select(nodes(0, 0, 0, 0), RoutingRequest(model="m", prompt_text=prompt)).name
    assert Counter(homes.values()) == {"n0": 2, "n1": 2, "n2": 2, "n3": 2}
    for group in range(8):  # every later request of a group goes home
        prompt = f"system prompt number {group} " * 10 + f"user {random.random()}"
        assert strategy.select(nodes(0, 0, 0, 0), RoutingRequest(model="m", prompt_text=prompt)).name \
            == homes[group]


def test_prefix_tree_match_and_lru_bound() -> None:
    tree = PrefixTree(chunk_chars=4, max_chars=40)
    tree.insert("aaaabbbbcccc")
    assert tree.match("aaaabbbbdddd") == 8
    assert tree.match("zzzz") == 0
    tree.insert("eeeeffffgggg")
    tree.insert("aaaabbbbcccc")  # refresh: now most recent
    tree.insert("hhhhiiiijjjjkkkkllll")  # over 40 chars: the least recently used goes first
    assert tree.size_chars <= 40
    assert tree.match("aaaabbbbcccc") == 12
    assert tree.match("eeeeffffgggg") < 12


def test_registry() -> None:
    assert set(STRATEGIES) == {"round_robin", "least_loaded", "capability", "latency", "power_of_two",
                               "cache_aware", "weighted"}
    with pytest.raises(InvalidRequestError):
        create_strategy("nope")


def test_cache_aware_judges_the_holder_not_the_pool() -> None:
    """A busy node elsewhere must not divert a prefix away from its idle home (SGLang's
    pool-wide imbalance switch would), but an overloaded home does shed to the least loaded."""
    strategy = _cache()
    strategy.record("n0", SYSTEM + "an earlier question")
    request = RoutingRequest(model="m", prompt_text=SYSTEM + "a new question")
    assert strategy.select(nodes(1, 12, 0), request).name == "n0"
    assert strategy.select(nodes(12, 1, 0), request).name == "n2"


def test_cache_aware_tree_bound_forgets_evicted_prefixes() -> None:
    strategy = _cache(max_chars_per_node=400)
    strategy.record("n0", SYSTEM + "first")
    for i in range(20):  # other prompts push the old prefix out, as the backend's LRU would
        strategy.record("n0", f"unrelated prompt {i} " * 4)
    assert strategy.select(nodes(0, 0, 0), RoutingRequest(model="m", prompt_text=SYSTEM + "again")).name \
        != "n0"


def test_cache_aware_prefix_hash_agrees_across_independent_instances() -> None:
    """Two server workers, each with its own trees and its own view of load, send every new
    prefix to the same node (least_loaded placement would not: each sees different loads)."""
    first, second = _cache(placement="prefix_hash"), _cache(placement="prefix_hash")
    homes = []
    for group in range(16):
        prompt = f"system prompt number {group} " * 12
        a = first.select(nodes(group % 3, 1, 2, 0), RoutingRequest(model="m", prompt_text=prompt + "q1"))
        b = second.select(nodes(2, 0, 1, group % 2), RoutingRequest(model="m", prompt_text=prompt + "q2"))
        assert a.name == b.name
        homes.append(a.name)
    assert len(set(homes)) >= 3  # the hash spreads prefixes over the nodes
    # an overloaded home still sheds to the least loaded node
    prompt = "another system prompt " * 12
    home = first.home(nodes(0, 0, 0, 0), prompt).name
    loads = [20 if f"n{i}" == home else 0 for i in range(4)]
    assert first.select(nodes(*loads), RoutingRequest(model="m", prompt_text=prompt)).name != home
