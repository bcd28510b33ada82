"""``python -m blueprint operators``: a service's operators, models, prices and endpoints, read
from the chain (Tangle membership + the blueprint manager's offers). One JSON object per line."""

from __future__ import annotations

import argparse
import asyncio
import json

from blueprint.cli_errors import UsageError
from blueprint.client import BlueprintClient
from blueprint.commands._chain import add_chain_arguments, chain_from, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_arguments(parser, signer=False)
    parser.add_argument("--service-id", type=int, help="Service (default: $SERVICE_ID).")
    parser.add_argument("--model", help="Only operators offering this model, cheapest first.")


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args, service_id=args.service_id)
    if settings.service_id is None:
        raise UsageError("--service-id (or SERVICE_ID) is required")
    async with chain_from(settings) as chain:
        client = BlueprintClient(chain, settings.service_id)
        if args.model:
            for route in await client.routes(args.model):
                print(json.dumps({"operator": route.operator, "endpoint": route.endpoint,
                                  **route.terms.to_json()}))
        else:
            for view in await client.operators():
                print(json.dumps(view.to_json()))
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
