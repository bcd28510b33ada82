"""``keys`` makes and reads the operator's keystore; ``service show`` reads a service back and
``service permit`` lets another account submit jobs (checked on chain)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from blueprint.devnet.anvil import DEV_KEYS, Anvil
from blueprint.devnet.stack import chain_client
from tests.devnet_support import devnet_anvil
from tests.fresh.cli_support import blueprint

pytestmark = pytest.mark.chain
OWNER = {"OWNER_KEY": DEV_KEYS[0]}
SNAPSHOT_OPERATORS = ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                      "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"]


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with devnet_anvil() as node:
        yield node


def test_keys_new_show_and_a_second_key_refused(tmp_path: Path) -> None:
    made = blueprint("keys", "new", "--keystore-uri", str(tmp_path / "ks"))
    assert made.code == 0, made.stderr
    created = json.loads(made.stdout)
    shown = json.loads(blueprint("keys", "show", "--keystore-uri", str(tmp_path / "ks")).stdout)
    assert shown["address"] == created["address"] and shown["public_key"].startswith("0x04")
    again = blueprint("keys", "import", "--keystore-uri", str(tmp_path / "ks"),
                      "--private-key-env", "OWNER_KEY", env=OWNER)
    assert again.code == 2
    assert again.err_lines[0].startswith(f"error: {tmp_path / 'ks'} already holds another key")
    assert DEV_KEYS[0][2:] not in made.stdout + again.stdout + again.stderr  # the secret is never printed


def test_service_show_and_permit(anvil: Anvil) -> None:
    rpc = ["--http-rpc-url", anvil.http_url]
    shown = blueprint("service", "show", "--service-id", "0", *rpc)
    assert shown.code == 0, shown.stderr
    service = json.loads(shown.stdout)
    assert service["status"] == "active" and service["active"] is True
    assert service["operators"] == SNAPSHOT_OPERATORS and service["owner"].lower() == \
        "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    caller = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"
    permitted = blueprint("service", "permit", "--service-id", "0", "--caller", caller,
                          "--private-key-env", "OWNER_KEY", *rpc, env=OWNER)
    assert permitted.code == 0, permitted.stderr
    assert json.loads(permitted.stdout) == {"service_id": 0, "permitted_caller": caller}

    async def is_permitted() -> bool:
        async with chain_client(anvil) as client:
            return bool(await client.call(client.tangle.functions.isPermittedCaller(0, caller)))

    assert asyncio.run(is_permitted())
