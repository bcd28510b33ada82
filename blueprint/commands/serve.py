"""``python -m blueprint serve``: the OpenAI-compatible API alone (no chain), over the configured
nodes. Runs until SIGINT/SIGTERM, then stops accepting and lets in-flight requests finish within
``server.shutdown_timeout_s``."""

from __future__ import annotations

import argparse
import asyncio
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


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "allow_public_without_auth", "max_body_bytes", "rate_limit_per_minute",
             "access_log")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


async def serve_settings(settings: Settings) -> None:
    """Build the nodes and the balancer from ``settings`` and serve until a signal."""
    from blueprint import tracing
    from blueprint.balancer import Balancer
    from blueprint.balancer.watcher import start_watcher
    from blueprint.llm.registry import create_client
    from blueprint.server import check_exposure, serve

    check_exposure(settings.server)  # before loading any model
    traced = tracing.configure_tracing(settings.tracing)
    clients = [create_client(node) for node in settings.nodes]
    balancer = Balancer(clients, settings.balancer,
                        node_configs={node.node_name: node for node in settings.nodes})
    await balancer.start()
    watcher = None
    try:
        watcher = await start_watcher(balancer, settings.balancer)  # nodes added/removed live
        await serve(balancer, settings.server,
                    on_ready=lambda running: print(f"READY {running.port}", flush=True))
    finally:
        if watcher is not None:
            await watcher.close()
        await balancer.close()
        if traced:  # flushes the last spans to the collector: off the event loop
            await asyncio.to_thread(tracing.shutdown_tracing)


def main(args: argparse.Namespace) -> int:
    from blueprint.server import run_with_uvloop

    configure_logging(args.verbose, args.pretty)
    overrides = _server_overrides(args)
    settings = load_settings(args.config, server=overrides) if overrides else load_settings(args.config)
    if not settings.nodes:
        log.warning("no nodes configured: every model request will answer 404")
    run_with_uvloop(serve_settings(settings))
    return 0
