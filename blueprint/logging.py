"""structlog set-up: JSON lines for machines, key=value colours with ``--pretty``.

Handlers bind ``call_id``/``service_id`` (jobs) or ``request_id`` (HTTP) with
``structlog.contextvars`` so every line of one job carries its id.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = ("password", "private_key", "secret", "api_key", "authorization", "mnemonic")


def _redact(_: object, __: str, event: dict) -> dict:
    """Never let a secret reach a log line, whatever a caller passes."""
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(verbosity: int = 0, pretty: bool = False) -> None:
    level = logging.WARNING - 10 * verbosity if verbosity else logging.INFO
    level = max(level, logging.DEBUG)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    renderer = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
