"""Console logins: a browser signs in once with an admin key and then holds a session cookie.

Why sessions and not the key itself: a browser cannot put a Bearer header on a page load, and a
key kept in page storage would be readable by any script on the page. The cookie is a random
token (``HttpOnly``, ``SameSite=Strict``); every call the page's script makes must also carry the
session's second token in ``X-Console-Token`` (read from the page itself), which a cross-site
form or request cannot send, so a logged-in browser cannot be driven from another site.
Sessions live in memory: a restart logs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

COOKIE = "bp_console"
TOKEN_HEADER = "X-Console-Token"
#: Most sessions kept at once (the oldest is dropped first).
MAX_SESSIONS = 256


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires_at: float


class ConsoleSessions:
    """The open console sessions, by cookie token."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self) -> tuple[str, Session]:
        """A new session: (cookie token, session with its page token)."""
        token = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(24), expires_at=self._clock() + self.ttl_s)
        self._sessions[token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, session

    def close(self, request: web.Request) -> None:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)

    def session(self, request: web.Request) -> Session | None:
        """The live session the request's cookie names, else None."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[token]
            return None
        return session

    def admits(self, request: web.Request) -> bool:
        """A live session cookie *and* its page token in ``X-Console-Token`` (for API calls)."""
        session = self.session(request)
        presented = request.headers.get(TOKEN_HEADER)
        return (session is not None and presented is not None
                and hmac.compare_digest(presented.encode(), session.csrf.encode()))

    def set_cookie(self, response: web.StreamResponse, token: str, *, secure: bool) -> None:
        response.set_cookie(COOKIE, token, max_age=int(self.ttl_s), httponly=True, samesite="Strict",
                            path="/", secure=secure)

    @staticmethod
    def clear_cookie(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")
