"""Chain jobs before HTTP traffic: a job's deadline travels with the request it makes.

Why a context variable: a job handler only builds an OpenAI request and calls the balancer; it
must stay free of chain details. The daemon wraps the handler in :func:`chain_job`, and every
balancer call made inside sees the deadline. Such a request

* never gets "overloaded" for a full queue or "no healthy node" for a moment with no healthy
  node: it waits, ahead of every HTTP request in the model's queue, until a slot frees up or the
  deadline passes (then :class:`~blueprint.errors.OverloadedError`, which the daemon reads as
  "leave it to the next operator");
* may use the slots that ``[balancer] reserved_job_share`` keeps away from HTTP traffic.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("chain_job_deadline", default=None)


@contextmanager
def chain_job(deadline: float) -> Iterator[None]:
    """Requests made inside are a chain job's, patient until ``deadline`` (``time.monotonic``)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def job_deadline() -> float | None:
    """The deadline of the chain job making the current request (None: an HTTP request)."""
    return _deadline.get()


def seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
