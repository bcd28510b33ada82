"""The operator console: a page served by the node at ``/`` (``serve`` and ``run``) for people.

Off unless admin keys are configured (``server.admin_keys``, or the API keys when none are set);
then ``/`` asks for an admin key once and keeps a session (:mod:`.sessions`). The page is a few
static files (no build step, no CDN: operators run air-gapped nodes) plus vendored uPlot
(``static/uPlot.*``, MIT, see ``static/uPlot.LICENSE``). It polls ``GET /console/api/state``,
one small JSON document (nodes, chart series from :mod:`.sampler`, models, quotes, and the chain
panel when ``run`` attached a :class:`ChainView`), and acts through the existing admin API
(``/admin/nodes``), which accepts a console session in place of a Bearer admin key.
"""

from __future__ import annotations

from blueprint.server.console.app import (
    CONSOLE_KEY,
    Console,
    attach_chain_view,
    attach_quote_log,
    install_console,
)
from blueprint.server.console.settings import ConsoleSettings
from blueprint.server.console.sources import ChainView, JsonObject, QuoteLog

__all__ = [
    "CONSOLE_KEY",
    "ChainView",
    "Console",
    "ConsoleSettings",
    "JsonObject",
    "QuoteLog",
    "attach_chain_view",
    "attach_quote_log",
    "install_console",
]
