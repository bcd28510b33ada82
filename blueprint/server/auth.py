"""Bearer-key authentication and the per-key rate limit.

Keys are hashed once at start-up; a request's key is hashed and compared with every configured
digest by ``hmac.compare_digest`` (no early exit), so neither the position of a match nor a common
prefix shows in the timing. Keys are never logged: only their index in the configuration is
kept, and that index is what the rate limiter and logs see.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from blueprint.errors import AuthenticationError, OverloadedError

#: ``Bearer <token>``: the token visible ASCII (RFC 6750's b64token and a few more), no spaces.
_BEARER_RE = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([\x21-\x7e]+)")


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    """A set of accepted Bearer keys. ``enabled`` is False when no key is configured (open API)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = tuple(_digest(key.encode()) for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> int:
        """The index of the key an ``Authorization`` header carries, or AuthenticationError.

        Parsed strictly: ``Bearer`` (any case), one space, a token of visible ASCII, nothing
        else. Nothing is stripped (U+00A0 or U+3000 must not shrink to a configured key), and a
        header that is not ASCII at all is a 401, not a crash."""
        if not authorization:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        match = _BEARER_RE.fullmatch(authorization)
        if match is None:
            raise AuthenticationError("Malformed Authorization header: expected 'Bearer <key>'.")
        presented = _digest(match.group(1).encode("ascii"))
        found = -1
        for index, digest in enumerate(self._digests):
            if hmac.compare_digest(presented, digest):
                found = index
        if found < 0:
            raise AuthenticationError("Invalid API key.")
        return found


class TokenBucket:
    """A classic token bucket: ``rate`` tokens per second up to ``capacity``."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        self._stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimiter:
    """One bucket per key (an API key's index, or a client address); ``check`` raises a 429
    OverloadedError when it is empty. At most ``max_keys`` buckets are kept (the least recently
    used go first), so a flood of distinct addresses cannot grow memory without bound."""

    def __init__(self, per_minute: float | None, burst: int | None, *, what: str = "this API key",
                 max_keys: int = 65_536) -> None:
        self._rate = per_minute / 60.0 if per_minute else 0.0
        self._capacity = float(burst or max(1.0, per_minute or 1.0))
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._what = what
        self._max_keys = max_keys

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def check(self, key: Hashable) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._capacity)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take()
        if wait:
            raise OverloadedError(f"Rate limit of {self._what} exceeded.", retry_after=wait,
                                  code="rate_limit_exceeded")
