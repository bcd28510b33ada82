"""Connection-level defences of the API, below the request handlers (issue 11, rows 7 and 10).

* **Idle and half-sent connections** are closed after ``idle_timeout_s``: aiohttp's keep-alive
  timer starts when a connection opens and fires unless a whole request head has arrived, so one
  value bounds a silent socket, a client trickling its headers (slowloris) and an idle
  keep-alive connection alike (aiohttp's default is an hour).
* **A bound on open connections** (``max_connections``): beyond it a new connection is answered
  ``503`` at once and closed, and a ``connection_shed`` line is logged (at most once a second,
  with the count), so one client opening sockets cannot exhaust the process's file descriptors.
* **Low-level errors** (a malformed request line or header, found by aiohttp's parser before
  any handler runs) are answered in OpenAI's error shape, quote nothing of the request (aiohttp's
  own text quoted the offending header, an ``Authorization`` key included) and are logged as
  one line without the parser's message (aiohttp logged that header, key included, with a
  traceback at error level).

aiohttp builds its protocol factory (``web.Server``) inside ``AppRunner.setup``; :func:`guard`
turns that instance into a :class:`GuardedServer` (a subclass) before the site starts listening.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger(__name__)

_SHED_BODY = json.dumps({"error": {
    "message": "The server has too many open connections; retry shortly.",
    "type": "server_error", "code": "too_many_connections", "param": None}}).encode()
_SHED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                  + str(len(_SHED_BODY)).encode() + b"\r\n\r\n" + _SHED_BODY)


def error_body(status: int) -> bytes:
    """An OpenAI-shaped error for a request aiohttp could not parse (nothing of it quoted)."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    message = (f"Malformed HTTP request ({status} {phrase})." if status < 500
               else "Internal server error.")
    return json.dumps({"error": {"message": message, "type": kind, "code": "malformed_request",
                                 "param": None}}).encode()


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with OpenAI-shaped, secret-free low-level errors."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # One line, no traceback, no parser message: the message quotes the raw header line.
        log.info("http_malformed_request", status=status, error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send an error response")
        response = web.Response(status=status, body=error_body(status), content_type="application/json")
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's protocol factory, making :class:`GuardedHandler` connections and shedding those
    beyond ``max_connections``."""

    max_connections: int = 0
    _shed_count: int = 0
    _shed_logged_at: float = 0.0

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        if self.max_connections and len(self._connections) >= self.max_connections:
            self.shed(transport)
            return
        super().connection_made(handler, transport)

    def open_count(self) -> int:
        return len(self._connections)

    def shed(self, transport: Any, open_now: int | None = None) -> None:
        """Answer a connection beyond ``max_connections`` 503 and close it (also the front's,
        :mod:`blueprint.server.front`, whose count includes this server's connections)."""
        self._shed_count += 1
        now = time.monotonic()
        if now - self._shed_logged_at >= 1.0:
            peer = transport.get_extra_info("peername")
            log.warning("connection_shed", open=self.open_count() if open_now is None else open_now,
                        limit=self.max_connections,
                        shed_since_last_line=self._shed_count, last_peer=peer[0] if peer else None)
            self._shed_count, self._shed_logged_at = 0, now
        try:
            transport.write(_SHED_RESPONSE)
        finally:
            transport.close()


def guard(runner: web.AppRunner, *, max_connections: int) -> None:
    """Make ``runner``'s protocol factory a :class:`GuardedServer` (after ``setup``, before any
    site starts)."""
    server = runner.server
    if server is None:
        raise RuntimeError("guard() needs a runner that was set up")
    server.__class__ = GuardedServer
    server.max_connections = max_connections  # type: ignore[attr-defined]
