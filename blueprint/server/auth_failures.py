"""Failed authentications bounded per client address, against online key guessing.

A key is only checked to be visible ASCII, so an operator may well configure a guessable one
(``admin123``); without a bound a client could try keys as fast as the server answers 401s. Each
failed check (a presented key that matches none: API routes on both paths, admin routes, the
console's login and Bearer checks) takes a token from its address's bucket; once the bucket is
empty that address is answered 429 on every request that needs a key, the right key included
(else the limit would tell which guess was right), until a token is back.

The address is the TCP peer's (an IPv6 peer counts by its /64, which one host usually holds
whole); ``X-Forwarded-For`` is not trusted, so behind a reverse proxy the limit bounds the proxy
as a whole. Each worker process keeps its own table.

Cost: a request with a correct key touches nothing here. The callers test :attr:`blocked` (a
dict, empty unless some address is blocked now) and look up their peer only when it is not
empty, or when a check failed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import structlog

from blueprint.errors import OverloadedError

log = structlog.get_logger(__name__)

#: Seconds within which an address is warned about in the log once.
WARN_WINDOW_S = 60.0
#: Addresses kept at most (the least recently failed go first).
MAX_ADDRESSES = 65_536
#: Seconds between sweeps of blocks that ran out for addresses that never came back.
_SWEEP_S = 1.0


class HasTransport(Protocol):
    """A request on either path: aiohttp's ``web.Request`` or the front's ``FrontRequest``."""

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


def client_address(host: str | None) -> str:
    """The key an address's failures count under: an IPv4 address (also when IPv4-mapped), an
    IPv6 address's /64 network, or the text itself when it is not an IP address."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def peer_of(request: HasTransport) -> str:
    """The client address of ``request``: its TCP peer (``unknown`` once it went away, ``local``
    on a Unix socket)."""
    transport = request.transport
    if transport is None:
        return "unknown"
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return client_address(str(peer[0]))
    return "local"


class _Bucket:
    __slots__ = ("stamp", "tokens", "warned_at")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now
        self.warned_at = -WARN_WINDOW_S - 1.0


class AuthFailures:
    """Per address, a token bucket of failed authentications: ``per_minute`` tokens a minute up
    to ``burst``; None turns the limit off."""

    def __init__(self, per_minute: float | None, burst: int, *, max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0 if per_minute else 0.0
        self._capacity = float(burst)
        self._max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: Address -> the clock's time at which it may try a key again. Empty unless some address
        #: is blocked (or was, until the next look-up sweeps it): the only test a request pays.
        self.blocked: dict[str, float] = {}
        self._sweep_at = 0.0

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str) -> float:
        """0.0 when ``address`` may try a key, else the seconds until it may."""
        now = self._clock()
        if now >= self._sweep_at:
            self._sweep(now)
        until = self.blocked.get(address)
        if until is None:
            return 0.0
        if now >= until:
            del self.blocked[address]
            return 0.0
        return until - now

    def refuse_if_blocked(self, address: str) -> None:
        """An OverloadedError (429, ``too_many_auth_failures``) when ``address`` is blocked."""
        wait = self.retry_after(address)
        if wait:
            raise OverloadedError("Too many failed authentications from this address: retry after "
                                  f"{math.ceil(wait)} s with a valid key.", retry_after=wait,
                                  code="too_many_auth_failures")

    def failed(self, address: str) -> None:
        """A failed check from ``address``: a token taken, and the address blocked (with one
        warning per window) when that was its last."""
        if not self._rate:
            return
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(self._capacity, now)
            if len(self._buckets) > self._max_addresses:
                evicted, _ = self._buckets.popitem(last=False)
                self.blocked.pop(evicted, None)
        else:
            self._buckets.move_to_end(address)
            bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        if bucket.tokens >= 1.0:
            return
        wait = (1.0 - bucket.tokens) / self._rate
        self.blocked[address] = now + wait
        if now - bucket.warned_at >= WARN_WINDOW_S:
            bucket.warned_at = now
            log.warning("auth_failures_blocked", peer=address, burst=int(self._capacity),
                        per_minute=round(self._rate * 60.0, 3), retry_after_s=round(wait, 3),
                        note="this address gets 429 on every request that needs a key until then")

    def _sweep(self, now: float) -> None:
        """Forget blocks that ran out (bounded work, at most once per ``_SWEEP_S``)."""
        self._sweep_at = now + _SWEEP_S
        if self.blocked:
            for address in [address for address, until in self.blocked.items() if until <= now]:
                del self.blocked[address]
