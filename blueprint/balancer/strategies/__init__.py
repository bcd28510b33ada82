"""Routing strategies, one module each, behind :class:`Strategy`; chosen by name per model."""

from __future__ import annotations

import random

from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies.base import NodeView, RoutingRequest, Strategy, least_loaded_fair
from blueprint.balancer.strategies.cache_aware import CacheAware
from blueprint.balancer.strategies.capability import CapabilityBased
from blueprint.balancer.strategies.latency import LatencyBased
from blueprint.balancer.strategies.least_loaded import LeastLoaded
from blueprint.balancer.strategies.power_of_two import PowerOfTwo
from blueprint.balancer.strategies.round_robin import RoundRobin
from blueprint.balancer.strategies.weighted import Weighted
from blueprint.errors import InvalidRequestError

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RoundRobin, LeastLoaded, CapabilityBased, LatencyBased, PowerOfTwo, CacheAware, Weighted)
}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Add a custom strategy (usable as a class decorator); its ``name`` is the config key."""
    STRATEGIES[cls.name] = cls
    return cls


def create_strategy(name: str, settings: BalancerSettings | None = None, *,
                    rng: random.Random | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise InvalidRequestError(f"Unknown balancer strategy {name!r}: use one of {known}.") from None
    return cls(settings, rng=rng)


__all__ = [
    "STRATEGIES", "CacheAware", "CapabilityBased", "LatencyBased", "LeastLoaded", "NodeView",
    "PowerOfTwo", "RoundRobin", "RoutingRequest", "Strategy", "Weighted", "create_strategy",
    "least_loaded_fair", "register_strategy",
]
