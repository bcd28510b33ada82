"""Chain fixtures shared by every test that needs TNT Core on anvil.

* ``anvil``: a fresh anvil per test module, loaded with the LocalTestnet state (about 0.2 s).
* ``chain_client``: an async :class:`~blueprint.tangle.chain.ChainClient` on it (per test).
* ``dev_service``: a fresh blueprint + active service with a new funded operator on the
  module's anvil (about 1 s, once per module), from :func:`blueprint.devnet.setup.setup_dev_service`.
* ``operator_keystore``: a keystore folder in the SDK layout holding the dev operator's key.
* ``w3``, ``ledger``, ``txm``: a raw AsyncWeb3 on the module's anvil, a fresh ledger in the test's
  tmp folder and a transaction manager for the dev operator (all per test).

Helpers for the consumer tests: :func:`output` (a job result) and :func:`seen_jobs` (record jobs
through the producer, as the daemon does).

Tests skip (not fail) only when anvil or the TNT Core state is not installed at all
(:mod:`tests.devnet_support`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_abi import encode
from web3 import AsyncWeb3

from blueprint.devnet.anvil import DEV_KEYS, Anvil
from blueprint.devnet.setup import DevService, setup_dev_service
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.keystore import write_sdk_key
from blueprint.tangle.ledger import Ledger
from blueprint.tangle.producer import Producer
from blueprint.tangle.rpc import PooledHTTPProvider, lean_web3
from blueprint.tangle.txmanager import TxManager
from blueprint.tangle.types import JobCall
from tests.devnet_support import devnet_anvil

TANGLE = "0x0165878A594ca255338adfa4d48449f69242Eb8F"
STAKING = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"
STATUS_REGISTRY = "0x2bdCC0de6bE1f7D2ee689a0342D76F52E8EFABa3"


def client_for(anvil: Anvil) -> ChainClient:
    """A ChainClient on ``anvil`` with the LocalTestnet contract addresses."""
    return ChainClient.connect(
        anvil.http_url, tangle_address=TANGLE, staking_address=STAKING,
        status_registry_address=STATUS_REGISTRY,
    )


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with devnet_anvil() as node:
        yield node


@pytest.fixture
async def chain_client(anvil: Anvil) -> AsyncIterator[ChainClient]:
    client = client_for(anvil)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
def dev_service(anvil: Anvil) -> DevService:
    """Set up once per module in its own short-lived event loop (the result is plain data)."""

    async def make() -> DevService:
        async with client_for(anvil) as client:
            return await setup_dev_service(client, owner_key=DEV_KEYS[0])

    return asyncio.run(make())


@pytest.fixture
def operator_keystore(tmp_path: Path, dev_service: DevService) -> Path:
    """A ``KEYSTORE_URI`` folder (SDK layout, mode 700/600) with the dev operator's key."""
    root = tmp_path / "keystore"
    write_sdk_key(root, dev_service.operator_key)
    return root


@pytest.fixture
async def w3(anvil: Anvil) -> AsyncIterator[AsyncWeb3]:
    """The daemon's own transport (pooled keep-alive HTTP, lean middleware), not web3's default."""
    web3 = lean_web3(PooledHTTPProvider(anvil.http_url))
    try:
        yield web3
    finally:
        await web3.provider.disconnect()


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    led = await Ledger.open(tmp_path)
    try:
        yield led
    finally:
        await led.close()


@pytest.fixture
def txm(w3: AsyncWeb3, dev_service: DevService) -> TxManager:
    """The dev operator's transaction manager: bumps after 5 s, gives up on a receipt after 30 s."""
    return TxManager(w3, dev_service.operator.account, bump_after=5.0, receipt_timeout=30.0)


def output(n: int) -> bytes:
    """A job result as the handlers encode it (an ABI string holding JSON), told apart by ``n``."""
    return encode(["string"], [f'{{"answer": {n}}}'])


async def seen_jobs(ledger: Ledger, w3: AsyncWeb3, service: DevService, call_ids: list[int]) -> list[JobCall]:
    """Put the jobs in the ledger the way the daemon does: through the producer (one scan of the
    recent blocks, all delivered jobs taken); returns those of ``call_ids`` it delivered."""
    first = min(call_ids)
    start = max(0, int(await w3.eth.block_number) - 2 * len(call_ids) - 2)  # one block per job tx
    producer = Producer(ledger, w3, tangle_address=service.tangle_contract, service_id=service.service_id,
                        start_block=start)
    await producer.scan_once()
    jobs = []
    while producer.pending():
        job = await producer.get()
        if job.call_id >= first:
            jobs.append(job)
    return [j for j in jobs if j.call_id in call_ids]
