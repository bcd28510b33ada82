"""``python -m blueprint register``: register this operator for the blueprint with its offer.

The offer is built from the configured nodes: each model with its context length, its output
limit, and wei-per-token prices (a node's ``options.price_per_prompt_token_wei`` /
``options.price_per_completion_token_wei``, else ``--prompt-price-wei`` / ``--completion-price-wei``);
the endpoint is the public URL of the HTTP API, which is also the ``rpcAddress``.

Modes: default registers (bonding first with ``--bond`` when not yet a staking operator);
``--update`` replaces the offer (and the endpoint); ``--unregister`` leaves the blueprint. With
``REGISTRATION_MODE_ON`` the registration inputs are only written to ``REGISTRATION_OUTPUT_PATH``
for the blueprint manager to submit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import structlog

from blueprint.cli_errors import UsageError
from blueprint.commands._chain import add_chain_arguments, chain_from, settings_from, signer_from
from blueprint.config import Settings
from blueprint.contracts.manager import blueprint_manager, manager_contract
from blueprint.contracts.offer import encode_offer, offer_from_nodes, split_for_registration
from blueprint.devnet import setup
from blueprint.tangle.keystore import Operator

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_arguments(parser)
    parser.add_argument("--blueprint-id", type=int, help="Blueprint (default: $BLUEPRINT_ID).")
    parser.add_argument("--public-url", help="Public URL of this operator's HTTP API (the rpcAddress).")
    parser.add_argument("--prompt-price-wei", type=int, default=0, help="Default wei per prompt token.")
    parser.add_argument("--completion-price-wei", type=int, default=0,
                        help="Default wei per completion token.")
    parser.add_argument("--bond", type=int, help="Bond (wei of the bond token) if not yet an operator.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update", action="store_true", help="Replace the offer of a registered operator.")
    mode.add_argument("--unregister", action="store_true", help="Leave the blueprint.")


def registration_output(settings: Settings) -> Path:
    """Where registration mode writes: ``REGISTRATION_OUTPUT_PATH``, else a file in ``DATA_DIR``."""
    return settings.registration_output_path or settings.data_dir / "registration_inputs.bin"


def write_registration_inputs(settings: Settings, public_url: str | None = None, *,
                              prompt_price_wei: int = 0, completion_price_wei: int = 0) -> int:
    """Registration mode (``REGISTRATION_MODE_ON``): write this operator's registration inputs,
    the ABI-encoded offer ``onRegister`` decodes, for the blueprint manager to submit with
    ``registerOperator``; print where and what as JSON. Nothing is sent to the chain."""
    url = public_url or settings.server.public_url
    if not url:
        raise UsageError("registration needs the public URL of this operator's API: set [server] "
                         "public_url (SERVER__PUBLIC_URL) or pass --public-url")
    if not settings.nodes:
        raise UsageError("registration needs at least one [[nodes]] table: the offer lists their models")
    offer = offer_from_nodes(settings.nodes, url, prompt_price_wei=prompt_price_wei,
                             completion_price_wei=completion_price_wei)
    target = registration_output(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_offer(offer))
    print(json.dumps({"registration_inputs": str(target), "bytes": target.stat().st_size,
                      **offer.to_json()}))
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args, blueprint_id=args.blueprint_id)
    if settings.registration_mode_on:
        return write_registration_inputs(settings, args.public_url, prompt_price_wei=args.prompt_price_wei,
                                         completion_price_wei=args.completion_price_wei)
    public_url = args.public_url or settings.server.public_url
    if not args.unregister and not public_url:
        raise UsageError("--public-url is required (clients reach the operator there), "
                         "or [server] public_url in the config")
    offer = None
    if not args.unregister:
        offer = offer_from_nodes(settings.nodes, public_url, prompt_price_wei=args.prompt_price_wei,
                                    completion_price_wei=args.completion_price_wei)
    if settings.blueprint_id is None:
        raise UsageError("--blueprint-id (or BLUEPRINT_ID) is required")
    account = signer_from(args, settings)
    async with chain_from(settings) as chain:
        tangle = chain.tangle.functions
        if args.unregister:
            await chain.send(account, tangle.unregisterOperator(settings.blueprint_id))
            print(json.dumps({"unregistered": account.address, "blueprint_id": settings.blueprint_id}))
            return 0
        assert offer is not None
        manager = manager_contract(chain.w3, await blueprint_manager(chain, settings.blueprint_id)).functions
        if args.update:
            await chain.send(account, manager.updateOffer(encode_offer(offer)))
            await chain.send(account, tangle.updateOperatorPreferences(
                settings.blueprint_id, b"", offer.endpoint))
        else:
            await setup.ensure_operator_bonded(chain, account, args.bond)
            head, rest = split_for_registration(offer)
            operator = Operator.from_private_key(bytes(account.key))
            await setup.register_operator(chain, operator, settings.blueprint_id, offer.endpoint,
                                          encode_offer(head))
            if rest:  # the whole offer does not fit the onRegister gas stipend
                await chain.send(account, manager.updateOffer(encode_offer(offer)))
        print(json.dumps({"operator": account.address, "blueprint_id": settings.blueprint_id,
                          **offer.to_json()}))
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
