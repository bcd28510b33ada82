"""The OpenAI-compatible HTTP API (the path OpenRouter uses), served on aiohttp.

``create_app(balancer, settings)`` builds the app; ``start_server``/``serve`` run it with
handler cancellation on client disconnect and a bounded graceful shutdown.
"""

from blueprint.server.app import create_app
from blueprint.server.runner import RunningServer, check_exposure, run_with_uvloop, serve, start_server
from blueprint.server.settings import ModelCatalogEntry, ServerSettings

__all__ = [
    "ModelCatalogEntry",
    "RunningServer",
    "ServerSettings",
    "check_exposure",
    "create_app",
    "run_with_uvloop",
    "serve",
    "start_server",
]
