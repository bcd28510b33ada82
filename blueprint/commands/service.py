"""``python -m blueprint service``: the steps between registering and serving jobs.

On Tangle a service comes to life in two steps: a customer (the future service owner) requests
one from chosen registered operators (``service request``), and each of those operators approves
(``service approve``); the last approval activates it and gives it its service id. ``service
show`` reads a service back, ``service permit`` lets another account submit jobs to it (only the
owner may by default). Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from eth_utils import to_checksum_address

from blueprint.cli_errors import CommandFailed, UsageError
from blueprint.commands._chain import add_chain_arguments, chain_from, settings_from, signer_from
from blueprint.devnet import setup
from blueprint.tangle.chain import ChainClient

#: tnt-core Types.ServiceStatus.
SERVICE_STATUS = {0: "pending", 1: "active", 2: "terminated"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    request = actions.add_parser("request", help="Request a service from registered operators (as owner).")
    add_chain_arguments(request)
    request.add_argument("--blueprint-id", type=int, help="Blueprint (default: $BLUEPRINT_ID).")
    request.add_argument("--operator", action="append", required=True, metavar="ADDRESS",
                         help="An operator registered for the blueprint (repeat for several).")
    request.add_argument("--permitted-caller", action="append", default=[], metavar="ADDRESS",
                         help="Another account allowed to submit jobs (repeat for several).")
    request.add_argument("--ttl", type=int, default=0, help="Lifetime in seconds (0: no end).")
    request.add_argument("--payment-wei", type=int, default=0,
                         help="Up-front payment in wei of the native token (pay-once blueprints).")

    approve = actions.add_parser("approve", help="Approve a service request (as one of its operators).")
    add_chain_arguments(approve)
    approve.add_argument("--request-id", type=int, required=True, help="What `service request` printed.")

    show = actions.add_parser("show", help="A service's blueprint, owner, status and operators.")
    add_chain_arguments(show, signer=False)
    show.add_argument("--service-id", type=int, help="Service (default: $SERVICE_ID).")

    permit = actions.add_parser("permit", help="Let another account submit jobs (as the owner).")
    add_chain_arguments(permit)
    permit.add_argument("--service-id", type=int, help="Service (default: $SERVICE_ID).")
    permit.add_argument("--caller", required=True, metavar="ADDRESS", help="The account to permit.")
    for sub in (request, approve, show, permit):
        sub.add_argument("-v", "--verbose", action="count", default=0, help="Show the traceback of an error.")


async def request_service(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_from(args, blueprint_id=args.blueprint_id)
    if settings.blueprint_id is None:
        raise UsageError("--blueprint-id (or BLUEPRINT_ID) is required")
    owner = signer_from(args, settings)
    async with chain_from(settings) as chain:
        for operator in args.operator:
            registered = await chain.call(chain.tangle.functions.isOperatorRegistered(
                settings.blueprint_id, to_checksum_address(operator)))
            if not registered:
                raise CommandFailed(f"{operator} is not registered for blueprint {settings.blueprint_id}: "
                                    "it must run `python -m blueprint register` first")
        request_id = await setup.request_service(
            chain, owner, settings.blueprint_id, args.operator, permitted_callers=args.permitted_caller,
            ttl=args.ttl, payment_amount=args.payment_wei)
    return {"request_id": request_id, "blueprint_id": settings.blueprint_id, "owner": owner.address,
            "operators": [to_checksum_address(op) for op in args.operator]}


async def approve_service(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_from(args)
    operator = signer_from(args, settings)
    async with chain_from(settings) as chain:
        service_id = await setup.approve_service(chain, operator, args.request_id)
    return {"request_id": args.request_id, "operator": operator.address, "service_id": service_id,
            "active": service_id is not None}


async def show_service(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_from(args, service_id=args.service_id)
    if settings.service_id is None:
        raise UsageError("--service-id (or SERVICE_ID) is required")
    async with chain_from(settings) as chain:
        return await describe_service(chain, settings.service_id)


async def describe_service(chain: ChainClient, service_id: int) -> dict[str, Any]:
    """The service as plain JSON, or :class:`CommandFailed` when the id was never used."""
    tangle = chain.tangle.functions
    service = await chain.call(tangle.getService(service_id))
    if int(service[1], 16) == 0:
        count = await chain.call(tangle.serviceCount())
        raise CommandFailed(f"service {service_id} does not exist on the Tangle contract "
                            f"{chain.tangle_address} ({count} services there)")
    operators = await chain.call(tangle.getServiceOperators(service_id))
    return {
        "service_id": service_id, "blueprint_id": int(service[0]), "owner": service[1],
        "status": SERVICE_STATUS.get(int(service[11]), str(service[11])),
        "active": bool(await chain.call(tangle.isServiceActive(service_id))),
        "created_at": int(service[2]), "ttl": int(service[3]), "operators": list(operators),
    }


async def permit_caller(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_from(args, service_id=args.service_id)
    if settings.service_id is None:
        raise UsageError("--service-id (or SERVICE_ID) is required")
    owner = signer_from(args, settings)
    async with chain_from(settings) as chain:
        await setup.add_permitted_caller(chain, owner, settings.service_id, args.caller)
    return {"service_id": settings.service_id, "permitted_caller": to_checksum_address(args.caller)}


ACTIONS = {"request": request_service, "approve": approve_service, "show": show_service,
           "permit": permit_caller}


def main(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(ACTIONS[args.action](args))))
    return 0
