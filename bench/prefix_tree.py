"""Cache-aware routing's tree work per request, before and after the radix tree, in one run.

Per request the cache-aware strategy matches the prompt against every candidate node's tree and
inserts it into the chosen one's, on the event loop. This replays that work on four trees of the
default bound (``max_chars_per_node``) at several prompt lengths: 16 long system prompts (60% of
the prompt) each followed by a user's own text, the shape of OpenRouter's long-prompt traffic. The
trees are filled first (past their bound at the longer lengths, so evictions are in the figures),
then the same requests are timed on the tree from ``--before`` (a git revision: the 16-character
chunk trie by default) and on this checkout's, alternating rounds so both see the same noise.
Times are CPU time of this process (``time.process_time``), steadier than wall time on a shared
box; each round gives the mean per request, and the table shows the median and range of rounds.

    python bench/prefix_tree.py                       # 1k, 4k, 20k, 100k characters, 5 rounds
    python bench/prefix_tree.py --lengths 4000 --rounds 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blueprint.balancer.prefix_tree import PrefixTree  # noqa: E402
from blueprint.balancer.settings import CacheAwareSettings  # noqa: E402

#: The last revision with the chunk trie (main before the radix tree).
CHUNK_TRIE_REVISION = "1d6ca9f52e72a722fdd6e1945bb5061a7259abb6"
NODES = 4
SYSTEMS = 16
WORDS = ["the", "model", "answer", "tangle", "operator", "request", "cache", "prefix", "token",
         "document", "section", "user", "assistant", "system", "please", "summarise", "context",
         "network", "blueprint", "router", "latency", "throughput", "value", "of", "and", "to"]


class Tree(Protocol):
    def match(self, text: str) -> int: ...
    def insert(self, text: str) -> None: ...


class TreeFactory(Protocol):
    def __call__(self, *, chunk_chars: int, max_chars: int) -> Tree: ...


def tree_at(revision: str) -> TreeFactory:
    """``PrefixTree`` as ``blueprint/balancer/prefix_tree.py`` was at ``revision``."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:blueprint/balancer/prefix_tree.py"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"cannot read the prefix tree at {revision} ({error}); "
                 "pass --before with a revision of this git checkout")
    module = types.ModuleType("prefix_tree_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision[:10]}:prefix_tree.py", "exec"), module.__dict__)
    return module.PrefixTree  # type: ignore[no-any-return]


def text(rng: random.Random, chars: int) -> str:
    words = []
    total = 0
    while total < chars:
        word = rng.choice(WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:chars]


def requests(length: int, count: int, seed: int) -> list[tuple[int, str]]:
    """``count`` prompts of ``length`` characters, each with the node its system prompt lives on."""
    rng = random.Random(seed)
    systems = [text(random.Random(index), length * 6 // 10) for index in range(SYSTEMS)]
    out = []
    for _ in range(count):
        index = rng.randrange(SYSTEMS)
        out.append((index % NODES, systems[index] + text(rng, length - len(systems[index]))))
    return out


def route(trees: list[Tree], batch: list[tuple[int, str]]) -> float:
    """CPU seconds per request of the strategy's tree work: match on every node, insert on one."""
    start = time.process_time()
    for node, prompt in batch:
        for tree in trees:
            tree.match(prompt)
        trees[node].insert(prompt)
    return (time.process_time() - start) / len(batch)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.3f} ({min(values) * 1e3:.3f}-{max(values) * 1e3:.3f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1000,4000,20000,100000",
                        help="prompt characters, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chars-per-round", type=int, default=2_000_000,
                        help="prompt characters per timed round (so every length gets similar work)")
    parser.add_argument("--before", default=CHUNK_TRIE_REVISION, help="git revision of the tree to compare")
    args = parser.parse_args(argv)
    knobs = CacheAwareSettings()
    makers: dict[str, TreeFactory] = {"before": tree_at(args.before), "after": PrefixTree}
    print(f"per request: {NODES} matches + 1 insert; trees of {knobs.max_chars_per_node:,} chars, "
          f"chunk_chars {knobs.chunk_chars}; before = {args.before[:10]}; ms of CPU, median (range) "
          f"of {args.rounds} rounds")
    print(f"{'prompt chars':>12} | {'before ms/req':>22} | {'after ms/req':>22} | before/after (range)")
    for length in (int(value) for value in args.lengths.split(",")):
        per_round = max(20, args.chars_per_round // length)
        # enough users' own text (40% of each prompt) to fill every tree 1.5 times: evictions run
        warmup = requests(length, int(1.5 * NODES * knobs.max_chars_per_node / (0.4 * length)), seed=length)
        trees = {name: [make(chunk_chars=knobs.chunk_chars, max_chars=knobs.max_chars_per_node)
                        for _ in range(NODES)] for name, make in makers.items()}
        for name in makers:
            route(trees[name], warmup)
        times: dict[str, list[float]] = {name: [] for name in makers}
        for index in range(args.rounds):
            batch = requests(length, per_round, seed=length * 1000 + index)
            for name in makers:
                times[name].append(route(trees[name], batch))
        ratios = [before / after for before, after in zip(times["before"], times["after"], strict=True)]
        print(f"{length:>12,} | {summary(times['before']):>22} | {summary(times['after']):>22} | "
              f"{statistics.median(times['before']) / statistics.median(times['after']):6.1f}x "
              f"({min(ratios):.1f}-{max(ratios):.1f})")


if __name__ == "__main__":
    main()
