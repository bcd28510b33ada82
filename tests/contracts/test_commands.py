"""The chain-facing commands against the session's anvil: operators, deploy, register."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blueprint.contracts.manager import blueprint_offers
from blueprint.tangle.chain import ChainClient
from tests.contracts.conftest import OFFER_A, OFFER_B, TANGLE, Stack, fresh_operator

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


async def _cli(*argv: str, env: dict[str, str] | None = None) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blueprint", *argv, cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def test_operators_command_lists_offers(stack: Stack) -> None:
    rows = await _cli("operators", "--service-id", str(stack.service_id),
                      "--http-rpc-url", stack.anvil.http_url, "--tangle-contract", TANGLE)
    by_op = {row["operator"]: row for row in rows}
    assert by_op[stack.operators[0].address]["endpoint"] == OFFER_A.endpoint
    second = by_op[stack.operators[1].address]["models"]
    assert [m["model"] for m in second] == [m.model for m in OFFER_B.models]
    assert by_op[stack.operators[1].address]["models"][0]["price_per_completion_token_wei"] == str(3 * 10**9)
    routes = await _cli("operators", "--service-id", str(stack.service_id), "--model", "tiny-embed",
                        "--http-rpc-url", stack.anvil.http_url, "--tangle-contract", TANGLE)
    assert [r["operator"] for r in routes] == [stack.operators[1].address]


async def test_deploy_register_update_unregister(stack: Stack, client: ChainClient, tmp_path: Path) -> None:
    chain = ["--http-rpc-url", stack.anvil.http_url, "--tangle-contract", TANGLE,
             "--private-key-env", "BP_KEY"]
    (deployed,) = await _cli("deploy", *chain, env={"BP_KEY": "0x" + bytes(stack.owner.account.key).hex()})
    operator = await fresh_operator(client, stack)
    config = tmp_path / "op.toml"
    config.write_text('[[nodes]]\nengine = "openai"\nmodel = "m-1"\nbase_url = "http://127.0.0.1:1/v1"\n'
                      'context_length = 4096\nmax_output_tokens = 512\n'
                      '[nodes.options]\nprice_per_prompt_token_wei = 5\n')
    env = {"BP_KEY": "0x" + bytes(operator.account.key).hex()}
    common = [*chain, "--config", str(config), "--blueprint-id", str(deployed["blueprint_id"])]
    await _cli("register", *common, "--public-url", "http://127.0.0.1:9200", "--completion-price-wei", "7",
               env=env)
    (view,) = await blueprint_offers(client, deployed["manager"])
    assert view.operator == operator.address and view.offer.endpoint == "http://127.0.0.1:9200"
    assert [m.as_tuple() for m in view.offer.models] == [("m-1", 4096, 512, 5, 7)]
    await _cli("register", *common, "--public-url", "http://127.0.0.1:9300", "--update", env=env)
    (view,) = await blueprint_offers(client, deployed["manager"])
    assert view.offer.endpoint == "http://127.0.0.1:9300"
    assert view.offer.models[0].price_per_completion_token == 0
    await _cli("register", *common, "--unregister", env=env)
    assert await blueprint_offers(client, deployed["manager"]) == []
    # Registration mode only writes the inputs.
    out = tmp_path / "inputs.bin"
    await _cli("register", "--config", str(config), "--public-url", "http://x",
               env={"REGISTRATION_MODE_ON": "true", "REGISTRATION_OUTPUT_PATH": str(out)})
    from blueprint.contracts.offer import decode_offer
    assert decode_offer(out.read_bytes()).models[0].model == "m-1"
