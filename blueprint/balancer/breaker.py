"""A circuit breaker per node: closed -> open -> half-open -> closed.

* closed: requests flow. It opens after ``failure_threshold`` consecutive failures, or when the
  failure rate over the last ``window_s`` exceeds ``failure_rate`` (with ``min_requests`` seen).
* open: the node is out of selection for a backoff that doubles with each reopening (capped,
  with jitter so that many balancers do not probe a recovering node at the same instant).
* half-open: exactly one probe (a request or an active health check) is admitted; success
  closes the breaker and resets the backoff, failure opens it again for longer.

The clock is injected so that tests can walk through the transitions without sleeping.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable

import structlog

from blueprint.balancer.settings import HealthSettings

log = structlog.get_logger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, settings: HealthSettings | None = None, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.settings = settings or HealthSettings()
        self.name = name
        self._clock = clock
        self._rng = rng or random.Random()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._events: deque[tuple[float, bool]] = deque()
        self._opens = 0
        self._reopen_at = 0.0
        self._probe_out = False
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose backoff ran out reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._reopen_at:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = False
            log.info("breaker_half_open", node=self.name)
        return self._state

    @property
    def retry_at(self) -> float | None:
        return self._reopen_at if self._state is BreakerState.OPEN else None

    def available(self) -> bool:
        """Whether a request may be sent now (half-open: only while no probe is out)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probe_out)

    def on_dispatch(self) -> None:
        """A request (or health check) is being sent; in half-open it is the one probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_out = True

    def record_success(self) -> None:
        self._consecutive = 0
        self._note(True)
        if self._state is not BreakerState.CLOSED:
            log.info("breaker_closed", node=self.name)
        self._state = BreakerState.CLOSED
        self._opens = 0
        self._probe_out = False

    def record_failure(self, error: str | None = None) -> None:
        self.last_error = error
        self._consecutive += 1
        self._note(False)
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._open()
        elif state is BreakerState.CLOSED and (
            self._consecutive >= self.settings.failure_threshold or self._rate_exceeded()
        ):
            self._open()

    def trip(self, error: str) -> None:
        """Open now, whatever the counts (a node that could not even start)."""
        self.last_error = error
        self._open()

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled): let another one through."""
        self._probe_out = False

    def _note(self, ok: bool) -> None:
        now = self._clock()
        self._events.append((now, ok))
        horizon = now - self.settings.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def _rate_exceeded(self) -> bool:
        total = len(self._events)
        if total < self.settings.min_requests:
            return False
        failures = sum(1 for _, ok in self._events if not ok)
        return failures / total > self.settings.failure_rate

    def _open(self) -> None:
        knobs = self.settings
        backoff = min(knobs.open_max_s, knobs.open_base_s * (2 ** self._opens))
        backoff *= 1.0 + self._rng.uniform(-knobs.jitter, knobs.jitter)
        self._opens += 1
        self._state = BreakerState.OPEN
        self._reopen_at = self._clock() + backoff
        self._probe_out = False
        self._events.clear()
        log.warning("breaker_open", node=self.name, backoff_s=round(backoff, 3), error=self.last_error)
