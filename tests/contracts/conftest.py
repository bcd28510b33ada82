"""One anvil with the TNT Core state per test session of this package, holding a blueprint with
our ``LlmServiceManager``, two operators with different offers, and an active service of both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account

from blueprint.contracts.manager import deploy_manager
from blueprint.contracts.offer import ModelOffer, Offer, encode_offer
from blueprint.devnet import setup
from blueprint.devnet.anvil import DEV_KEYS, Anvil, start_anvil
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.keystore import Operator

TANGLE = "0x0165878A594ca255338adfa4d48449f69242Eb8F"
STAKING = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"
STATUS_REGISTRY = "0x2bdCC0de6bE1f7D2ee689a0342D76F52E8EFABa3"

OFFER_A = Offer("http://127.0.0.1:9101", (
    ModelOffer("tiny-llama", 4096, 1024, 10**9, 2 * 10**9),
))
OFFER_B = Offer("http://127.0.0.1:9102", (
    ModelOffer("tiny-llama", 8192, 2048, 2 * 10**9, 3 * 10**9),
    ModelOffer("tiny-embed", 512, 1, 10**8, 1),
))


@dataclass
class Stack:
    anvil: Anvil
    manager: str
    blueprint_id: int
    service_id: int
    owner: Operator
    operators: list[Operator]
    first_block: int

    def client(self) -> ChainClient:
        return ChainClient.connect(self.anvil.http_url, tangle_address=TANGLE, staking_address=STAKING,
                                   status_registry_address=STATUS_REGISTRY)


async def _fresh_operator(client: ChainClient, owner: Operator) -> Operator:
    op = Operator.from_private_key(bytes(Account.create().key))
    await setup.fund_account(client, owner.account, op.address, eth=10 * 10**18, tnt=1_000 * 10**18)
    await setup.ensure_operator_bonded(client, op)
    return op


async def _build(anvil: Anvil) -> Stack:
    first_block = int(anvil.rpc("eth_blockNumber"), 16) + 1
    client = ChainClient.connect(anvil.http_url, tangle_address=TANGLE, staking_address=STAKING,
                                 status_registry_address=STATUS_REGISTRY)
    try:
        owner = Operator.from_private_key(DEV_KEYS[0])
        manager = await deploy_manager(client, owner.account)
        blueprint_id = await setup.create_blueprint(client, owner, jobs=setup.DEFAULT_JOBS, manager=manager)
        operators = []
        for offer in (OFFER_A, OFFER_B):
            op = await _fresh_operator(client, owner)
            await setup.register_operator(client, op, blueprint_id, offer.endpoint, encode_offer(offer))
            operators.append(op)
        request_id = await setup.request_service(client, owner, blueprint_id, [o.address for o in operators])
        service_id = None
        for op in operators:
            service_id = await setup.approve_service(client, op, request_id) or service_id
        assert service_id is not None
        return Stack(anvil, manager, blueprint_id, service_id, owner, operators, first_block)
    finally:
        await client.close()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with start_anvil() as anvil:
        yield asyncio.run(_build(anvil))


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[ChainClient]:
    chain = stack.client()
    try:
        yield chain
    finally:
        await chain.close()


async def fresh_operator(client: ChainClient, stack: Stack) -> Operator:
    return await _fresh_operator(client, stack.owner)
