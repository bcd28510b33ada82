"""Admission: one FIFO queue per model in front of the nodes' slots.

Each node runs at most ``limit`` requests; beyond that a request waits in its model's queue, which
holds the sum of the serving nodes' ``max_queue``. A full queue answers :class:`OverloadedError`
at once (HTTP 429 with a ``Retry-After`` hint), never a long wait; ``queue_timeout_s`` bounds the
wait when set. Freed slots go to waiters in FIFO order, and a waiter that cannot use any free slot
(its free nodes were all tried) does not block those behind it.

Chain jobs (requests made inside :func:`blueprint.balancer.priority.chain_job`) queue ahead of
every HTTP request (behind earlier jobs), are never refused for a full queue, wait through a
moment with no healthy node, and give up with :class:`OverloadedError` at their own deadline.

The admission knows nodes only through the balancer's index (``serving``) and its strategy pick
(``assign``, which reserves the slot); it never chooses a node itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from blueprint.balancer.breaker import BreakerState
from blueprint.balancer.node import NodeState
from blueprint.balancer.priority import job_deadline, seconds_left
from blueprint.balancer.strategies import RoutingRequest
from blueprint.errors import BlueprintError, ModelNotFoundError, NoHealthyNodeError, OverloadedError

_NONE_TRIED: frozenset[str] = frozenset()


@dataclass(eq=False)
class _Waiter:
    request: RoutingRequest
    exclude: frozenset[str]
    future: asyncio.Future[NodeState]
    #: a chain job's request: ahead of HTTP ones, patient through a moment with no healthy node
    priority: bool = False


class Admission:
    """The per-model queues.

    Args:
        serving: the nodes serving a model (the balancer's index; not mutated here).
        assign: the strategy's pick among the free candidates (all of a node's slots for a
            chain job, the unreserved ones otherwise), with a slot reserved; None when no
            candidate has a free slot.
        retry_after: the ``Retry-After`` hint for an overloaded model.
        queue_timeout_s: longest wait in a queue (None: until a slot frees up).
    """

    def __init__(self, serving: Callable[[str], list[NodeState]],
                 assign: Callable[[RoutingRequest, frozenset[str], bool], NodeState | None],
                 retry_after: Callable[[str], float], queue_timeout_s: float | None) -> None:
        self._serving = serving
        self._assign = assign
        self._retry_after = retry_after
        self.queue_timeout_s = queue_timeout_s
        self._queues: dict[str, deque[_Waiter]] = {}

    def queued(self, model: str) -> int:
        return len(self._queues.get(model, ()))

    def capacity(self, model: str) -> int:
        return sum(node.max_queue for node in self._serving(model) if not node.draining)

    def admit_at_once(self, request: RoutingRequest) -> NodeState | None:
        """The common case, without a coroutine or a wait: nothing queued for the model and a
        free slot on a healthy node now (the strategy's pick, reserved). None otherwise: then
        :meth:`acquire` decides (queue, refuse, or the error that explains why not)."""
        if self._queues.get(request.model):
            return None
        return self._assign(request, _NONE_TRIED, job_deadline() is not None)

    async def acquire(self, request: RoutingRequest, exclude: frozenset[str],
                      release: Callable[[NodeState], None]) -> NodeState:
        """A node with a slot reserved for this request, waiting in the model's FIFO queue when
        every candidate is busy; OverloadedError at once when that queue is full. ``release``
        gives back a slot handed to a waiter that was cancelled meanwhile."""
        model = request.model
        serving = self._serving(model)
        if not serving:
            raise ModelNotFoundError(model)
        deadline = job_deadline()
        priority = deadline is not None
        # a chain job outlasts a moment with no healthy node; once it has tried nodes, the
        # failure goes back to its caller, which tries again from the start
        healthy = any(node.selectable() and node.name not in exclude for node in serving)
        if not healthy and (not priority or exclude):
            raise NoHealthyNodeError(f"No healthy node serves {model!r} right now.")
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = deque()
        ahead = sum(1 for w in queue if w.priority) if priority else len(queue)
        if not ahead:
            node = self._assign(request, exclude, priority)
            if node is not None:
                return node
        if not priority and len(queue) >= self.capacity(model):
            raise OverloadedError(
                f"All nodes serving {model!r} are busy and the queue is full.",
                retry_after=self._retry_after(model),
            )
        waiter = _Waiter(request, exclude, asyncio.get_running_loop().create_future(), priority)
        if priority:
            queue.insert(ahead, waiter)  # behind earlier jobs, ahead of every HTTP request
        else:
            queue.append(waiter)
        wait_s = seconds_left(deadline) if deadline is not None else self.queue_timeout_s
        try:
            async with asyncio.timeout(wait_s):
                return await waiter.future
        except TimeoutError:
            raise OverloadedError(
                f"No node serving {model!r} freed up within {wait_s}s.",
                retry_after=self._retry_after(model),
            ) from None
        except asyncio.CancelledError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                release(fut.result())
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def dispatch(self, models: Iterable[str] | None = None) -> None:
        """Hand free slots to the waiters of ``models`` (default: every queue)."""
        for model in list(self._queues) if models is None else models:
            self._dispatch(model)

    def _dispatch(self, model: str) -> None:
        queue = self._queues.get(model)
        if not queue:
            return
        for waiter in list(queue):
            if waiter.future.done():
                queue.remove(waiter)
                continue
            serving = self._serving(model)
            if not serving:
                queue.remove(waiter)
                waiter.future.set_exception(ModelNotFoundError(model))
                continue
            alive = [n for n in serving if not n.draining and n.breaker.state is not BreakerState.OPEN
                     and n.name not in waiter.exclude]
            if not alive:
                if waiter.priority and not waiter.exclude:
                    continue  # a chain job waits for a node to come back (or its deadline)
                queue.remove(waiter)
                waiter.future.set_exception(NoHealthyNodeError(f"No healthy node serves {model!r}."))
                continue
            node = self._assign(waiter.request, waiter.exclude, waiter.priority)
            if node is None:
                if not any(n.has_slot() and n.selectable() for n in serving):
                    return
                continue
            queue.remove(waiter)
            waiter.future.set_result(node)

    def fail_all(self, error: BlueprintError) -> None:
        """Fail every waiting request with ``error`` (the balancer is closing)."""
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(error)
