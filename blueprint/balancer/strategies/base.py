"""The one interface every routing strategy implements, and the plain data it reads.

A strategy sees only :class:`NodeView` snapshots (no clients, no network), so each one can be
tested with a table of nodes and expected picks. The balancer filters the candidates first
(healthy, not draining, serves the model, has a free slot, not tried yet), so a strategy only
ranks; it never has to check health itself.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from blueprint.balancer.settings import BalancerSettings


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a strategy may know about one node at the moment of a decision."""

    name: str
    in_flight: int = 0
    queued: int = 0
    #: Requests the node runs at once (its slot count in the balancer).
    limit: int = 16
    weight: float = 1.0
    #: USD per prompt token plus per completion token (0 when free or unknown).
    price: float = 0.0
    context_length: int | None = None
    features: frozenset[str] = frozenset()
    #: Moving averages measured by the balancer (backend figures when we have none yet).
    ttft_s: float | None = None
    tpot_s: float | None = None
    #: Latency observations behind the averages; a node with few is still being explored.
    samples: int = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.queued


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """The routing-relevant part of a request: its model, a text to match prefixes on, a size
    estimate and the features it needs."""

    model: str
    prompt_text: str = ""
    prompt_tokens: int = 0
    max_tokens: int | None = None
    features: frozenset[str] = field(default_factory=frozenset)


class Strategy(ABC):
    """Picks one node among candidates. Stateful strategies (round robin, cache aware) keep
    their state per model: the balancer makes one instance per model."""

    name: ClassVar[str]
    #: Whether :meth:`select` reads ``RoutingRequest.prompt_text``; when not, the balancer does
    #: not build it (joining every message of a long conversation costs on the hot path).
    uses_prompt_text: ClassVar[bool] = False

    def __init__(self, settings: BalancerSettings | None = None, *, rng: random.Random | None = None) -> None:
        self.settings = settings or BalancerSettings()
        self.rng = rng or random.Random(self.settings.seed)

    @abstractmethod
    def select(self, candidates: Sequence[NodeView], request: RoutingRequest) -> NodeView:
        """Return one of ``candidates`` (never empty)."""

    def chosen_alone(self, node: str, request: RoutingRequest) -> None:
        """The balancer sent ``request`` to ``node``, its only candidate, without asking
        :meth:`select` (no views built); a strategy that learns from its picks notes it here."""

    def forget(self, node: str) -> None:
        """The node left the pool: drop what is kept about it."""


def least_loaded_fair(candidates: Sequence[NodeView], counter: int) -> NodeView:
    """The least loaded candidate (load relative to its slot count, then absolute load); ties
    are broken by rotating through the tied nodes with ``counter``, so the first-registered
    node gets no advantage."""
    best: tuple[float, int] | None = None
    tied: list[NodeView] = []
    for view in candidates:  # one pass, each key computed once (this runs on every request)
        load = view.in_flight + view.queued
        key = (load / (view.limit or 1), load)
        if best is None or key < best:
            best, tied = key, [view]
        elif key == best:
            tied.append(view)
    return tied[counter % len(tied)]
