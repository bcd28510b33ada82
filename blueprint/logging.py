"""structlog set-up: one JSON line per event on stderr (``--pretty``: one coloured line), so that
stdout holds a command's results alone (``submit ... | jq`` works) and a daemon's log file is one
event per line, whoever emitted it.

Handlers bind ``call_id``/``service_id`` (jobs) or ``request_id`` (HTTP) with
``structlog.contextvars`` so every line of one job carries its id. Records of the standard
``logging`` module (web3, aiohttp, transformers) and Python warnings go through the same
renderer; the chattiest libraries are held at WARNING unless ``-vv``, and progress bars are off.
What users sent or got (prompts, messages, results) is never logged unless ``log_content`` is on
(``--log-content`` / ``BLUEPRINT_LOG_CONTENT=1``), and secrets never are.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, TextIO

import structlog

_SECRET_KEYS = ("password", "private_key", "secret", "api_key", "authorization", "mnemonic")
#: Keys whose values are what a user sent or got back: hidden unless content logging is on.
CONTENT_KEYS = frozenset({"prompt", "prompts", "messages", "input", "inputs", "request_body", "result",
                          "completion", "text"})
#: Libraries that log every connection or request at INFO: WARNING unless -vv.
CHATTY_LOGGERS = ("web3", "urllib3", "httpx", "httpcore", "filelock", "huggingface_hub", "transformers",
                  "asyncio", "websockets")
CONTENT_ENV = "BLUEPRINT_LOG_CONTENT"

_state: dict[str, Any] = {"configured": False, "log_content": False}


def _redact(_: object, __: str, event: dict) -> dict:
    """Never let a secret reach a log line, whatever a caller passes."""
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
    return event


def _hide_content(_: object, __: str, event: dict) -> dict:
    """Prompts and results stay out of logs (they are the users' data) unless asked for."""
    if _state["log_content"]:
        return event
    for key in CONTENT_KEYS.intersection(event):
        value = event[key]
        event[key] = f"<{len(value) if hasattr(value, '__len__') else '?'} hidden: --log-content>"
    return event


def _one_line_exception(_: object, __: str, event: dict) -> dict:
    """Pretty mode: an exception as ``error_type: message`` on the event's line (JSON keeps the
    whole traceback, escaped, in its one line)."""
    info = event.pop("exc_info", None)
    if info:
        exc = info if isinstance(info, BaseException) else sys.exc_info()[1]
        if exc is not None:
            event["exc"] = f"{type(exc).__name__}: {exc}"
    return event


def _one_line_values(_: object, __: str, event: dict) -> dict:
    """Pretty mode: newlines inside values (a warning's source line, a library's multi-line
    message) shown as ``\\n`` so one event stays one line."""
    for key, value in event.items():
        if isinstance(value, str) and "\n" in value:
            event[key] = value.rstrip("\n").replace("\n", "\\n")
    return event


def configure_logging(verbosity: int = 0, pretty: bool = False, *, base_level: int = logging.INFO,
                      log_content: bool | None = None, stream: TextIO | None = None) -> None:
    """Route structlog, stdlib logging and warnings to ``stream`` (stderr), one line per event.

    ``base_level`` is the level without ``-v`` (the daemons: INFO; the one-shot commands:
    WARNING); each ``-v`` lowers it one step, ``-vv`` also lets the chatty libraries speak.
    """
    out = stream or sys.stderr
    level = max(base_level - 10 * verbosity, logging.DEBUG)
    if log_content is None:
        log_content = os.environ.get(CONTENT_ENV, "").lower() in ("1", "true", "yes")
    _state.update(configured=True, log_content=log_content, pretty=pretty)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(name, "1")
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if pretty
                     else structlog.processors.JSONRenderer())
    exceptions: list[Any] = ([_one_line_exception, _one_line_values] if pretty
                             else [structlog.processors.format_exc_info])
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        _hide_content,
    ]
    structlog.configure(
        processors=[*shared, *exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exceptions, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level if verbosity >= 2 else max(level, logging.WARNING))
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> one line
    warnings.simplefilter("default")
    route_library_logging()


def route_library_logging() -> None:
    """transformers keeps its own stderr handler and progress bars: once it is imported (engines
    call this after importing it; importing it here would cost seconds), route its records
    through our handler and turn its bars off."""
    module = sys.modules.get("transformers.utils.logging")
    if module is None or not _state["configured"]:
        return
    module.disable_progress_bar()
    module.disable_default_handler()
    module.enable_propagation()


def log_content_enabled() -> bool:
    """Whether prompts and results may be logged (``--log-content``)."""
    return bool(_state["log_content"])


def is_configured() -> bool:
    return bool(_state["configured"])
