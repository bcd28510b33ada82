"""Shared flags and set-up of the chain-facing commands (deploy, register, operators, submit)."""

from __future__ import annotations

import argparse
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from blueprint.cli_errors import UsageError
from blueprint.config import Settings, load_settings
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.keystore import load_operator_from_settings


def add_chain_arguments(parser: argparse.ArgumentParser, *, signer: bool = True) -> None:
    parser.add_argument("--config", help="TOML config file (default: $BLUEPRINT_CONFIG).")
    parser.add_argument("--http-rpc-url", help="JSON-RPC URL (default: $HTTP_RPC_URL).")
    parser.add_argument("--tangle-contract", help="Tangle proxy address (default: $TANGLE_CONTRACT).")
    if signer:
        parser.add_argument("--keystore-uri", help="Keystore (default: $KEYSTORE_URI).")
        parser.add_argument("--private-key-env", metavar="VAR",
                            help="Read a 0x private key from this environment variable instead "
                            "of the keystore (dev chains and CI).")


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(getattr(args, "config", None), http_rpc_url=args.http_rpc_url,
                         tangle_contract=args.tangle_contract,
                         keystore_uri=getattr(args, "keystore_uri", None), **extra)


def signer_from(args: argparse.Namespace, settings: Settings) -> LocalAccount:
    """The signing account: a key from ``--private-key-env`` or the configured keystore."""
    import os

    var = getattr(args, "private_key_env", None)
    if var:
        key = os.environ.get(var)
        if not key:
            raise UsageError(f"environment variable {var} is empty: export it with the 0x private key")
        return Account.from_key(key)
    return load_operator_from_settings(settings).account


def chain_from(settings: Settings) -> ChainClient:
    return ChainClient.from_settings(settings)
