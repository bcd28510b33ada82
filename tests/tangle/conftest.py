"""Chain fixtures shared by every test that needs TNT Core on anvil.

* ``anvil``: a fresh anvil per test module, loaded with the LocalTestnet state (about 0.2 s).
* ``chain_client``: an async :class:`~blueprint.tangle.chain.ChainClient` on it (per test).
* ``dev_service``: a fresh blueprint + active service with a new funded operator on the
  module's anvil (about 1 s, once per module), from :func:`blueprint.tangle.setup.setup_dev_service`.
* ``operator_keystore``: a keystore folder in the SDK layout holding the dev operator's key.

Tests skip (not fail) only when anvil or the TNT Core state is not installed at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from blueprint.tangle.chain import ChainClient
from blueprint.tangle.devnet import DEV_KEYS, Anvil, DevnetError, find_anvil, find_tnt_core_state, start_anvil
from blueprint.tangle.keystore import write_sdk_key
from blueprint.tangle.setup import DevService, setup_dev_service

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
    try:
        find_anvil()
        find_tnt_core_state()
    except DevnetError as exc:
        pytest.skip(f"no local devnet: {exc}")
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


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
