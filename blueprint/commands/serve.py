"""``python -m blueprint serve``: the OpenAI-compatible API alone (no chain), over the configured
nodes. Runs until SIGINT/SIGTERM, then stops accepting and lets in-flight requests finish within
``server.shutdown_timeout_s``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import structlog

from blueprint.config import Settings, load_settings
from blueprint.logging import configure_logging

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $BLUEPRINT_CONFIG).")
    parser.add_argument("--host", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, help="Port (default 8080; 0 picks a free one).")
    parser.add_argument("--allow-public-without-auth", action="store_true", default=None,
                        help="Serve on a non-loopback address with no API key.")
    parser.add_argument("--max-body-bytes", type=int, help="Largest request body accepted.")
    parser.add_argument("--rate-limit-per-minute", type=float, help="Requests per minute per key.")
    parser.add_argument("--access-log", action="store_true", default=None, help="aiohttp access log.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More logging (-vv: debug).")
    parser.add_argument("--pretty", action="store_true", help="Human-readable logs.")
    parser.add_argument("--log-content", action="store_true", default=None,
                        help="Also log prompts and results ($BLUEPRINT_LOG_CONTENT; off: users' data).")


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "allow_public_without_auth", "max_body_bytes", "rate_limit_per_minute",
             "access_log")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


async def serve_settings(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Serve the configured nodes until a signal (:func:`blueprint.assembly.serve_api`); prints
    ``READY <port>`` once listening, or calls ``on_ready`` (a worker of ``server.workers``)."""
    from blueprint.assembly import serve_api

    await serve_api(settings, on_ready=(lambda running: print(f"READY {running.port}", flush=True))
                    if on_ready is None else (lambda _running: on_ready()))


def main(args: argparse.Namespace) -> int:
    from blueprint.server import run_with_uvloop

    configure_logging(args.verbose, args.pretty, log_content=args.log_content)
    overrides = _server_overrides(args)
    settings = load_settings(args.config, server=overrides) if overrides else load_settings(args.config)
    if not settings.nodes:
        log.warning("no nodes configured: every model request will answer 404")
    if settings.server.workers > 1:
        from blueprint.workers import serve_workers

        return serve_workers(settings, lambda one, ready: run_with_uvloop(serve_settings(one, ready)))
    run_with_uvloop(serve_settings(settings))
    return 0
