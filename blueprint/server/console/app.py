"""The console's routes and the JSON state document (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from pydantic import BaseModel

from blueprint.errors import OverloadedError
from blueprint.server.auth import KeyRing
from blueprint.server.auth_failures import AuthFailures, peer_of
from blueprint.server.console.sampler import MetricsSampler
from blueprint.server.console.sessions import ConsoleSessions
from blueprint.server.console.settings import ConsoleSettings
from blueprint.server.console.sources import ChainView, JsonObject, QuoteLog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from blueprint.server.app import Api

log = structlog.get_logger(__name__)

STATIC = Path(__file__).with_name("static")
CONSOLE_KEY = web.AppKey("console", object)
#: Static files the page loads (nothing else under static/ is served).
ASSETS: dict[str, str] = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
}
#: Seconds the chain panel waits for the chain view before sending the rest without it.
CHAIN_TIMEOUT_S = 3.0
#: Quotes the page lists (newest first).
RECENT_QUOTES_SHOWN = 20


def _engines() -> list[str]:
    """Engines a node can be added with: the built-in ones and installed entry points."""
    from blueprint.llm.registry import BUILTIN_ENGINES, ENTRY_POINT_GROUP

    return sorted({*BUILTIN_ENGINES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


class Console:
    """The console of one app. Args are what it reads; ``chain`` is attached later by ``run``."""

    def __init__(self, *, admin_keys: KeyRing, settings: ConsoleSettings,
                 node_rows: Callable[[], list[JsonObject]], models: Callable[[], Sequence[BaseModel]],
                 balancer_info: Callable[[], JsonObject], registry: CollectorRegistry,
                 auth_failures: AuthFailures) -> None:
        self.admin_keys = admin_keys
        #: The API's failed-authentication limiter: a login guess counts as a wrong Bearer key.
        self.auth_failures = auth_failures
        self.settings = settings
        self.node_rows = node_rows
        self.models = models
        self.balancer_info = balancer_info
        self.sessions = ConsoleSessions(settings.session_ttl_s)
        self.sampler = MetricsSampler(registry, node_rows, self._queue_depth, period_s=settings.refresh_s,
                                      points=settings.history_points)
        self.chain: ChainView | None = None
        self.quote_log: QuoteLog | None = None
        self.engines = _engines()
        self._page = (STATIC / "console.html").read_text()
        self._login = (STATIC / "login.html").read_text()
        self._assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    def _queue_depth(self) -> int:
        models = self.balancer_info().get("models", {})
        return sum(int(info.get("queued", 0)) for info in models.values())

    # --- auth --------------------------------------------------------------------------------

    def _admin_bearer(self, request: web.Request) -> bool:
        """Whether the request carries an admin key; a wrong one counts against its address,
        and a blocked address is refused 429 (the guard answers the OverloadedError)."""
        header = request.headers.get("Authorization")
        if not header:
            return False
        failures = self.auth_failures
        if failures.blocked:
            failures.refuse_if_blocked(peer_of(request))
        try:
            self.admin_keys.check(header)
        except Exception:
            failures.failed(peer_of(request))
            return False
        return True

    def _allowed(self, request: web.Request) -> bool:
        """An API call: a console session with its page token, or a Bearer admin key."""
        return self.sessions.admits(request) or self._admin_bearer(request)

    @staticmethod
    def _refused() -> web.Response:
        body = {"error": {"message": "Console: log in with an admin key.", "type": "authentication_error",
                          "code": "console_login_required"}}
        return web.json_response(body, status=401, headers=_HEADERS)

    # --- pages -------------------------------------------------------------------------------

    def _login_page(self, message: str = "", status: int = 401,
                    headers: dict[str, str] | None = None) -> web.Response:
        text = self._login.replace("{{MESSAGE}}", message)
        return web.Response(text=text, status=status, content_type="text/html",
                            headers={**_HEADERS, **(headers or {})})

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.session(request)
        if session is None:
            return self._login_page()
        text = (self._page.replace("{{TOKEN}}", session.csrf)
                .replace("{{REFRESH_MS}}", str(int(self.settings.refresh_s * 1000))))
        return web.Response(text=text, content_type="text/html", headers=_HEADERS)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = str(form.get("key", "")).strip()
        failures = self.auth_failures
        if failures.blocked:
            try:
                failures.refuse_if_blocked(peer_of(request))
            except OverloadedError as exc:
                wait = max(1, math.ceil(exc.retry_after))
                return self._login_page(f"Too many failed logins from this address: try again in {wait} s.",
                                        429, {"Retry-After": str(wait)})
        try:
            self.admin_keys.check(f"Bearer {key}")
        except Exception:
            log.warning("console.login_refused", peer=request.remote)
            if key:
                failures.failed(peer_of(request))
            return self._login_page("That is not an admin key.")
        token, _session = self.sessions.open()
        response = web.Response(status=303, headers={**_HEADERS, "Location": "/"})
        self.sessions.set_cookie(response, token, secure=request.secure)
        log.info("console.login", peer=request.remote)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        if not self.sessions.admits(request):
            return self._refused()
        self.sessions.close(request)
        response = web.json_response({"logged_out": True}, headers=_HEADERS)
        self.sessions.clear_cookie(response)
        return response

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        if self.sessions.session(request) is None and not self._admin_bearer(request):
            return self._refused()
        return web.Response(body=self._assets[name], content_type=ASSETS[name], headers=_HEADERS)

    # --- data --------------------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.StreamResponse:
        if not self._allowed(request):
            return self._refused()
        return web.Response(body=json.dumps(await self.snapshot()).encode(), content_type="application/json",
                            headers=_HEADERS)

    async def snapshot(self) -> JsonObject:
        """The whole state document the page polls."""
        info = self.balancer_info()
        chain: JsonObject | None = None
        if self.chain is not None:
            chain = await self._chain_panel(self.chain)
        return {
            "now": time.time(),
            "refresh_s": self.settings.refresh_s,
            "nodes": [_node(row) for row in self.node_rows()],
            "engines": self.engines,
            "strategy": info.get("strategy"),
            "queues": info.get("models", {}),
            "series": self.sampler.series(),
            "models": [model.model_dump(mode="json", exclude_none=True) for model in self.models()],
            "quotes": {"issued": int(self.sampler.totals.get("quotes_issued", 0)),
                       "refused": int(self.sampler.totals.get("quotes_refused", 0)),
                       "recent": self._recent_quotes()},
            "tx_url": self.settings.tx_url,
            "chain": chain,
        }

    def _recent_quotes(self) -> list[JsonObject] | None:
        """The newest quotes signed, or None when this node signs none (``serve``)."""
        if self.quote_log is None:
            return None
        try:
            return self.quote_log.recent_quotes(RECENT_QUOTES_SHOWN)
        except Exception as exc:  # the page still loads without them
            log.warning("console.quotes_failed", error=str(exc) or type(exc).__name__)
            return None

    async def _chain_panel(self, chain: ChainView) -> JsonObject:
        try:
            async with asyncio.timeout(CHAIN_TIMEOUT_S):
                summary = await chain.summary()
                summary["jobs"] = await chain.recent_jobs(self.settings.recent_jobs)
                return summary
        except Exception as exc:  # the chain or the ledger hiccuped: the rest of the page still loads
            log.warning("console.chain_failed", error=str(exc) or type(exc).__name__)
            return {"error": str(exc) or type(exc).__name__}

    async def job(self, request: web.Request) -> web.StreamResponse:
        if not self._allowed(request):
            return self._refused()
        if self.chain is None:
            raise web.HTTPNotFound()
        try:
            service_id, call_id = int(request.match_info["service_id"]), int(request.match_info["call_id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        found = await self.chain.job(service_id, call_id)
        if found is None:
            raise web.HTTPNotFound()
        return web.json_response(found, headers=_HEADERS)

    # --- lifecycle ---------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.sampler.start()

    async def on_cleanup(self, app: web.Application) -> None:
        await self.sampler.stop()


def _node(row: JsonObject) -> JsonObject:
    """The fields of a node row the page shows."""
    keys = ("name", "engine", "models", "health", "healthy", "draining", "in_flight", "limit", "queued",
            "max_queue", "requests_total", "errors_total", "last_error", "ttft_s", "time_per_output_token_s",
            "tokens_per_second", "kv_cache_usage", "retry_at")
    return {key: row.get(key) for key in keys}


def install_console(app: web.Application, api: Api) -> Console | None:
    """Serve the console on ``app`` when admin keys are configured (else nothing: ``/`` stays 404),
    and let the admin API accept a console session."""
    settings: ConsoleSettings = api.settings.console
    if not settings.enabled or not api.admin_keys.enabled:
        return None
    if api.settings.workers > 1:  # each worker would keep its own logins and figures
        log.warning("console.off_with_workers", workers=api.settings.workers,
                    note="the console needs server.workers = 1 (one process holds the sessions and charts)")
        return None
    console = Console(admin_keys=api.admin_keys, settings=settings, node_rows=api.node_rows,
                      models=api.catalog, balancer_info=api.balancer.describe,
                      registry=api.telemetry.registry, auth_failures=api.auth_failures)
    app[CONSOLE_KEY] = console
    api.admin_session = console.sessions.admits
    app.router.add_get("/", console.index, name="console_index")
    app.router.add_post("/console/login", console.login, name="console_login")
    app.router.add_post("/console/logout", console.logout, name="console_logout")
    app.router.add_get("/console/api/state", console.state, name="console_state")
    app.router.add_get("/console/api/jobs/{service_id}/{call_id}", console.job, name="console_job")
    app.router.add_get("/console/static/{name}", console.asset, name="console_asset")
    app.on_startup.append(console.on_startup)
    app.on_cleanup.append(console.on_cleanup)
    return console


def attach_chain_view(app: web.Application, view: ChainView) -> None:
    """Give the console of ``app`` (if it has one) the chain panel's data (``run`` calls this)."""
    console = app.get(CONSOLE_KEY)
    if isinstance(console, Console):
        console.chain = view


def attach_quote_log(app: web.Application, quotes: QuoteLog) -> None:
    """Let the console of ``app`` (if it has one) list the quotes signed (``run`` calls this)."""
    console = app.get(CONSOLE_KEY)
    if isinstance(console, Console):
        console.quote_log = quotes
