"""The load balancer: the one way the HTTP server and the job handlers reach LLM nodes.

``Balancer`` admits, routes (one strategy per model, see :mod:`blueprint.balancer.strategies`),
retries before the first token, tracks health with a circuit breaker per node, and lets nodes be
added, drained and removed while it runs (:mod:`blueprint.balancer.watcher` does that from a
TOML file).
"""

from blueprint.balancer.balancer import Balancer
from blueprint.balancer.breaker import BreakerState, CircuitBreaker
from blueprint.balancer.node import NodeState
from blueprint.balancer.settings import BalancerSettings
from blueprint.balancer.strategies import (
    STRATEGIES,
    NodeView,
    RoutingRequest,
    Strategy,
    create_strategy,
    register_strategy,
)

__all__ = [
    "STRATEGIES", "Balancer", "BalancerSettings", "BreakerState", "CircuitBreaker", "NodeState",
    "NodeView", "RoutingRequest", "Strategy", "create_strategy", "register_strategy",
]
