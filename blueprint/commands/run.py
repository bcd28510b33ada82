"""``python -m blueprint run``: the operator daemon, as the blueprint manager starts it.

The manager runs ``<binary> run [--test-mode] [--pretty] [-v...] [--dry-run]`` with its
environment variables (``HTTP_RPC_URL``, ``SERVICE_ID``...); each is also accepted here as a
``--kebab-case`` flag, and a flag wins over the environment, which wins over the TOML config.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from blueprint.logging import configure_logging

if TYPE_CHECKING:
    from structlog.typing import BindableLogger

    from blueprint.config import Settings

#: flag -> (Settings field, type, help). The manager's variables, one flag each.
MANAGER_FLAGS: dict[str, tuple[str, type, str]] = {
    "--http-rpc-url": ("http_rpc_url", str, "HTTP JSON-RPC endpoint ($HTTP_RPC_URL)."),
    "--ws-rpc-url": ("ws_rpc_url", str, "WebSocket JSON-RPC endpoint ($WS_RPC_URL)."),
    "--keystore-uri": ("keystore_uri", str, "Keystore folder ($KEYSTORE_URI, default ./keystore)."),
    "--keystore-password-file": ("keystore_password_file", Path,
                                 "File holding the V3 keystore password ($KEYSTORE_PASSWORD_FILE)."),
    "--data-dir": ("data_dir", Path, "Folder of the job ledger ($DATA_DIR)."),
    "--blueprint-id": ("blueprint_id", int, "Blueprint id ($BLUEPRINT_ID)."),
    "--service-id": ("service_id", int, "Service id ($SERVICE_ID); absent: registration mode."),
    "--protocol": ("protocol", str, "Protocol ($PROTOCOL): tangle."),
    "--chain": ("chain", str, "local_testnet, local_mainnet, testnet or mainnet ($CHAIN)."),
    "--tangle-contract": ("tangle_contract", str, "Tangle core contract ($TANGLE_CONTRACT)."),
    "--staking-contract": ("staking_contract", str, "Staking contract ($STAKING_CONTRACT)."),
    "--status-registry-contract": ("status_registry_contract", str,
                                   "Operator status registry ($STATUS_REGISTRY_CONTRACT)."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config declaring the LLM nodes ($BLUEPRINT_CONFIG).")
    parser.add_argument("--test-mode", action="store_true", default=None, help="Manager's test mode.")
    parser.add_argument("--pretty", action="store_true", help="Human-readable logs instead of JSON lines.")
    parser.add_argument("--log-content", action="store_true", default=None,
                        help="Also log prompts and results ($BLUEPRINT_LOG_CONTENT; off: users' data).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More logs (-vv: debug).")
    parser.add_argument("--dry-run", action="store_true", default=None,
                        help="Compute results and record them, but submit nothing.")
    for flag, (_field, kind, help_text) in MANAGER_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings overrides the flags give (unset flags are None and dropped by load_settings)."""
    values: dict[str, Any] = {field: getattr(args, flag[2:].replace("-", "_"))
                              for flag, (field, _kind, _help) in MANAGER_FLAGS.items()}
    values["test_mode"] = args.test_mode
    values["dry_run"] = args.dry_run
    return values


def main(args: argparse.Namespace) -> int:
    configure_logging(args.verbose, args.pretty, log_content=args.log_content)
    log = structlog.get_logger("blueprint.run")
    from blueprint.config import load_settings

    settings = load_settings(args.config, **overrides_from_args(args))  # a ConfigError: the CLI says it
    if settings.service_id is None:
        return _registration_mode(settings, log)

    from blueprint.assembly import run_daemon

    try:
        _run(_checked_run(settings, run_daemon))
    except KeyboardInterrupt:
        return 130
    return 0


async def _checked_run(settings: Settings, run_daemon: Callable[[Settings], Awaitable[None]]) -> None:
    """The chain checks of :mod:`blueprint.tangle.preflight` (fast, before any model loads),
    then the daemon."""
    from blueprint.tangle.chain import ChainClient
    from blueprint.tangle.keystore import load_operator_from_settings
    from blueprint.tangle.preflight import check_service

    operator = load_operator_from_settings(settings)
    async with ChainClient.from_settings(settings) as chain:
        await check_service(chain, settings.service_id, operator.address)
    await run_daemon(settings)


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works the same, a little slower
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _registration_mode(settings: Settings, log: BindableLogger) -> int:
    """No SERVICE_ID: with ``REGISTRATION_MODE_ON`` the manager wants this operator's
    registration inputs (written by :func:`blueprint.commands.register.write_registration_inputs`);
    without it there is no service to serve, which the operator must hear plainly."""
    from blueprint.cli_errors import UsageError

    if not settings.registration_mode_on:
        raise UsageError("SERVICE_ID is not set: `run` answers the jobs of one service; set SERVICE_ID / "
                         "--service-id, or REGISTRATION_MODE_ON=true to write the registration inputs",
                         "a new operator registers with `python -m blueprint register`, then approves "
                         "a service request (`python -m blueprint service approve`)")
    from blueprint.commands.register import write_registration_inputs

    log.info("registration_mode", output=str(settings.registration_output_path or "DATA_DIR"))
    return write_registration_inputs(settings)
