"""Talking to a deployed ``LlmServiceManager``: deploy it, read offers back, decode its reverts.

The manager's custom errors reach a caller wrapped by Tangle as
``ManagerReverted(address manager, bytes data)``; :func:`explain_revert` unwraps them so that a
rejected job reads as, e.g., ``MaxTokensAboveLimit(serviceId, 4096, 1024)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract

from blueprint.contracts import load_artifact, manager_abi
from blueprint.contracts.offer import Offer, offer_from_view
from blueprint.tangle.abi import DecodedRevert, canonical_type, decode_revert
from blueprint.tangle.chain import ChainClient, ChainError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OperatorOfferView:
    """One operator's offer as read from the manager."""

    operator: str
    offer: Offer
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        return {"operator": self.operator, "updated_at": self.updated_at, **self.offer.to_json()}


def manager_contract(w3: AsyncWeb3, address: str) -> AsyncContract:
    return w3.eth.contract(address=to_checksum_address(address), abi=manager_abi())


async def deploy_manager(client: ChainClient, deployer: LocalAccount, *, gas: int = 6_000_000) -> str:
    """Deploy the committed ``LlmServiceManager`` bound to ``client``'s Tangle; returns its address."""
    artifact = load_artifact()
    factory = client.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    constructor = factory.constructor(client.tangle_address)
    init_code = bytes.fromhex(constructor.data_in_transaction.removeprefix("0x"))
    txm = await client.sender(deployer)
    receipt = await txm.send_and_wait(None, init_code, gas=gas, what="deploy LlmServiceManager")
    address = receipt.contract_address
    if not address:
        raise ChainError("deploy LlmServiceManager: the receipt has no contract address")
    log.info("manager.deployed", address=address, gas_used=receipt.gas_used)
    return to_checksum_address(address)


@cache
def _manager_errors() -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in manager_abi():
        if item["type"] == "error":
            types = [canonical_type(p) for p in item.get("inputs", [])]
            sig = f"{item['name']}({','.join(types)})"
            table[keccak(text=sig)[:4]] = (item["name"], types)
    return table


def decode_manager_error(data: bytes) -> DecodedRevert | None:
    """Decode revert data raised by the manager itself; None when it is not one of its errors."""
    found = _manager_errors().get(bytes(data[:4]))
    if found is None:
        return None
    name, types = found
    try:
        return DecodedRevert(name, tuple(abi_decode(types, bytes(data[4:]))), bytes(data))
    except (DecodingError, ValueError, OverflowError):
        return None


def explain_revert(revert: DecodedRevert) -> DecodedRevert:
    """Unwrap ``ManagerReverted(manager, data)`` into the manager's own error where possible."""
    if revert.name == "ManagerReverted" and len(revert.args) == 2:
        inner = decode_manager_error(bytes(revert.args[1]))
        if inner is not None:
            return inner
        return decode_revert(bytes(revert.args[1]))
    if revert.name == "UnknownError" and revert.data:
        inner = decode_manager_error(revert.data)
        if inner is not None:
            return inner
    return revert


async def service_offers(client: ChainClient, manager: str, service_id: int) -> list[OperatorOfferView]:
    """The operators of a service (per Tangle) with the offers the manager holds."""
    contract = manager_contract(client.w3, manager)
    raw = await client.call(contract.functions.getServiceOffers(service_id))
    return [OperatorOfferView(*offer_from_view(item)) for item in raw]


async def blueprint_offers(client: ChainClient, manager: str) -> list[OperatorOfferView]:
    """Every operator registered to the blueprint with its offer."""
    contract = manager_contract(client.w3, manager)
    raw = await client.call(contract.functions.getOperators())
    return [OperatorOfferView(*offer_from_view(item)) for item in raw]


async def blueprint_manager(client: ChainClient, blueprint_id: int) -> str:
    """The manager address of a blueprint, from Tangle's ``getBlueprint``."""
    raw = await client.call(client.tangle.functions.getBlueprint(blueprint_id))
    return to_checksum_address(raw[1])


async def service_blueprint(client: ChainClient, service_id: int) -> int:
    raw = await client.call(client.tangle.functions.getService(service_id))
    return int(raw[0])
