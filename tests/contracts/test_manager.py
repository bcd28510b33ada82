"""LlmServiceManager on the real TNT Core contracts: offers, views, job checks, hook gas."""

from __future__ import annotations

import json
import urllib.request

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from blueprint.contracts.manager import (
    blueprint_offers,
    decode_manager_error,
    explain_revert,
    manager_contract,
    service_offers,
)
from blueprint.contracts.offer import (
    ModelOffer,
    Offer,
    encode_offer,
    estimated_register_gas,
    split_for_registration,
)
from blueprint.devnet import setup
from blueprint.tangle.chain import ChainClient, TxRevertedError
from tests.contracts.conftest import OFFER_A, OFFER_B, TANGLE, Stack, fresh_operator

pytestmark = pytest.mark.chain

STIPEND = 500_000
#: Every hook must leave at least 40% of the stipend unused.
GAS_CEILING = 300_000
HOOK_FAILED_TOPIC = "0x" + keccak(text="ManagerHookFailed(address,bytes4,bytes)").hex()


def job_inputs(model: str, max_tokens: int, request: str = '{"messages":[]}') -> bytes:
    return encode(["string", "uint32", "string"], [model, max_tokens, request])


async def test_offers_read_back_through_views(stack: Stack, client: ChainClient) -> None:
    views = await service_offers(client, stack.manager, stack.service_id)
    by_op = {v.operator: v.offer for v in views}
    assert by_op == {stack.operators[0].address: OFFER_A, stack.operators[1].address: OFFER_B}
    assert {v.operator for v in await blueprint_offers(client, stack.manager)} == set(by_op)
    mgr = manager_contract(client.w3, stack.manager).functions
    ops, terms = await mgr.serviceOperatorsForModel(stack.service_id, "tiny-llama").call()
    assert ops == [o.address for o in stack.operators]
    assert [t[2] for t in terms] == [1024, 2048]
    ops, _ = await mgr.operatorsForModel("tiny-embed").call()
    assert ops == [stack.operators[1].address]
    assert await mgr.serviceModelLimit(stack.service_id, "tiny-llama").call() == [True, 2048]
    assert await mgr.serviceModelLimit(stack.service_id, "nope").call() == [False, 0]
    assert await mgr.blueprintId().call() == stack.blueprint_id
    assert await mgr.blueprintOwner().call() == stack.owner.address


async def test_on_job_call_accepts_offered_and_rejects_the_rest(stack: Stack, client: ChainClient) -> None:
    # The limit is the max over the service's operators offering the model (2048, not 1024).
    call_id = await setup.submit_job(client, stack.owner, stack.service_id, 0, job_inputs("tiny-llama", 2048))
    assert call_id >= 0
    await setup.submit_job(client, stack.owner, stack.service_id, 2, job_inputs("tiny-embed", 0))
    cases = [
        (0, job_inputs("not-offered", 1), "ModelNotOffered", (stack.service_id, "not-offered")),
        (1, job_inputs("tiny-llama", 2049), "MaxTokensAboveLimit", (stack.service_id, 2049, 2048)),
        (0, b"\x00" * 95, "MalformedInputs", ()),
        (0, job_inputs("tiny-llama", 1)[:-40], "MalformedInputs", ()),
        (0, encode(["uint256", "uint256", "uint256"], [2**255, 1, 96]), "MalformedInputs", ()),
    ]
    for job, inputs, name, args in cases:
        with pytest.raises(TxRevertedError) as info:
            await setup.submit_job(client, stack.owner, stack.service_id, job, inputs)
        assert info.value.revert.name == "ManagerReverted"
        revert = explain_revert(info.value.revert)
        assert (revert.name, revert.args) == (name, args)


async def test_hooks_only_from_tangle_and_unknown_job(stack: Stack, client: ChainClient) -> None:
    mgr = manager_contract(client.w3, stack.manager).functions
    for sender, job, name in ((TANGLE, 7, "UnknownJob"), (stack.owner.address, 0, "NotTangle")):
        data = mgr.onJobCall(stack.service_id, job, 0, job_inputs("tiny-llama", 1))._encode_transaction_data()
        reply = _raw_rpc(stack, "eth_call", [{"from": sender, "to": stack.manager, "data": data}, "latest"])
        revert = decode_manager_error(bytes.fromhex(reply["error"]["data"][2:]))
        assert revert is not None and revert.name == name


async def _trace_manager_calls(stack: Stack, client: ChainClient, start: int) -> dict[str, int]:
    """Max gas used per manager function over every tx since ``start``, from the call tracer; fails
    on any hook frame that errored and on any ManagerHookFailed log."""
    names = {}
    for item in manager_contract(client.w3, stack.manager).abi:
        if item["type"] == "function":
            sig = f"{item['name']}({','.join(_type(p) for p in item['inputs'])})"
            names["0x" + keccak(text=sig)[:4].hex()] = item["name"]
    used: dict[str, int] = {}
    latest = await client.w3.eth.block_number
    for number in range(start, latest + 1):
        block = await client.w3.eth.get_block(number, full_transactions=False)
        for tx_hash in block["transactions"]:
            receipt = await client.w3.eth.get_transaction_receipt(tx_hash)
            if receipt["status"] != 1 or receipt["to"] not in (TANGLE, stack.manager):
                continue
            for entry in receipt["logs"]:
                topic = "0x" + bytes(entry["topics"][0]).hex()
                assert topic != HOOK_FAILED_TOPIC, f"ManagerHookFailed in {tx_hash}"
            trace = stack.anvil.rpc("debug_traceTransaction",
                                    ["0x" + bytes(tx_hash).hex(), {"tracer": "callTracer"}])
            for frame in _frames(trace):
                to_manager = frame.get("to", "").lower() == stack.manager.lower()
                has_input = frame.get("input", "0x") != "0x"
                if frame["type"] in ("CALL", "STATICCALL") and to_manager and has_input:
                    name = names.get(frame["input"][:10], frame["input"][:10])
                    if frame["type"] == "CALL" and name.startswith("on"):
                        assert "error" not in frame, (name, frame.get("error"))
                    used[name] = max(used.get(name, 0), int(frame["gasUsed"], 16))
    return used


def _raw_rpc(stack: Stack, method: str, params: list) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(stack.anvil.http_url, data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _type(param: dict) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_type(c) for c in param["components"]) + ")" + param["type"][5:]
    return param["type"]


def _frames(frame: dict):
    yield frame
    for child in frame.get("calls", []):
        yield from _frames(child)


async def test_hook_gas_under_stipend_and_no_hook_failures(stack: Stack, client: ChainClient) -> None:
    # Drive every hook at least once: a result, an update, a worst-case registration, an unregister.
    call_id = await setup.submit_job(client, stack.owner, stack.service_id, 0, job_inputs("tiny-llama", 16))
    await client.send(stack.operators[0].account, client.tangle.functions.submitResult(
        stack.service_id, call_id, encode(["string"], ['{"id":"x"}'])), gas=3_000_000)
    heavy = Offer("https://operator-three.example.org:8443/llm/api", tuple(
        ModelOffer(f"org-{i}/model-family-{i}-instruct-v1", 32_768, 4_096, 10**12, 10**12) for i in range(4)))
    third = await fresh_operator(client, stack)
    head, rest = split_for_registration(heavy)
    assert rest and 0 < len(head.models) < 4
    await setup.register_operator(client, third, stack.blueprint_id, heavy.endpoint, encode_offer(head))
    await client.send(third.account, manager_contract(client.w3, stack.manager).functions.updateOffer(
        encode_offer(heavy)))
    await client.send(third.account, client.tangle.functions.updateOperatorPreferences(
        stack.blueprint_id, b"", "https://moved.example.org"))
    mgr = manager_contract(client.w3, stack.manager).functions
    view = (await blueprint_offers(client, stack.manager))
    moved = next(v for v in view if v.operator == third.address)
    assert moved.offer.endpoint == "https://moved.example.org" and len(moved.offer.models) == 4
    smaller = Offer("https://x.example", heavy.models[:1])
    await client.send(third.account, mgr.updateOffer(encode_offer(smaller)))
    await client.send(third.account, client.tangle.functions.unregisterOperator(stack.blueprint_id))
    assert third.address not in {v.operator for v in await blueprint_offers(client, stack.manager)}

    used = await _trace_manager_calls(stack, client, stack.first_block)
    expected = {"onBlueprintCreated", "onRegister", "onRequest", "onApprove", "onServiceInitialized",
                "onJobCall", "onJobResult", "onUpdatePreferences", "onUnregister"}
    assert expected <= set(used), used
    for name, gas in used.items():
        assert gas < GAS_CEILING, f"{name} used {gas} gas (stipend {STIPEND})"
    print({k: used[k] for k in sorted(used)})
    # The Python estimate that splits registrations is conservative against the real figure.
    assert used["onRegister"] <= max(estimated_register_gas(o) for o in (OFFER_A, OFFER_B, head))


async def test_update_offer_is_operator_only(stack: Stack, client: ChainClient) -> None:
    mgr = manager_contract(client.w3, stack.manager).functions
    with pytest.raises(TxRevertedError) as info:
        await client.send(stack.owner.account, mgr.updateOffer(encode_offer(OFFER_A)))
    revert = explain_revert(info.value.revert)
    assert revert.name == "NotRegistered"
    assert to_checksum_address(revert.args[0]) == stack.owner.address
