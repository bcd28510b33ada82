"""LlmServiceManager with many operators and a flat rate per job: an underpaid job is rejected in
``onJobCall`` (the call record with its ``.payment`` exists when the hook runs), a quote-paid job
needs a quoted operator that offers the model, ``quotePrice`` is what an operator's offer
charges, and ``onJobCall`` stays far under the 500k hook stipend with 16 operators."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_abi import encode

from blueprint.contracts.manager import deploy_manager, explain_revert, manager_contract
from blueprint.contracts.offer import ModelOffer, Offer, encode_offer
from blueprint.devnet import setup
from blueprint.tangle.chain import ChainClient, TxRevertedError
from blueprint.tangle.keystore import Operator
from blueprint.tangle.quotes import JobQuoteDetails, inputs_hash, sign_job_quote
from tests.contracts.conftest import TANGLE, Stack, fresh_operator

pytestmark = pytest.mark.chain

OPERATORS = 16
MODEL = "tiny-llama"
ONLY_FIRST = "only-first"  # offered by operator 0 alone
CHAT_RATE = 10**14  # the flat rate of job 0 (job 1 and 2: none)
GWEI_100 = 10**11


def offer_of(i: int) -> Offer:
    """Operator i: the cheaper, the smaller its output limit (limit 64*(i+1), price (i+1) x 1e11)."""
    models = [ModelOffer(MODEL, 4096, 64 * (i + 1), GWEI_100, (i + 1) * GWEI_100)]
    if i == 0:
        models.append(ModelOffer(ONLY_FIRST, 4096, 512, GWEI_100, GWEI_100))
    return Offer(f"http://127.0.0.1:{9200 + i}", tuple(models))


def floor_of(max_tokens: int) -> int:
    """maxTokens x the cheapest completion price among operators whose limit covers it."""
    if max_tokens == 0:
        return 0
    cheapest = min((i + 1) * GWEI_100 for i in range(OPERATORS) if 64 * (i + 1) >= max_tokens)
    return max_tokens * cheapest


@dataclass
class Wide:
    manager: str
    blueprint_id: int
    service_id: int
    operators: list[Operator]


async def _build(stack: Stack) -> Wide:
    client = stack.client()
    try:
        manager = await deploy_manager(client, stack.owner.account)
        blueprint_id = await setup.create_blueprint(client, stack.owner, jobs=setup.DEFAULT_JOBS,
                                                    manager=manager, pricing=setup.PRICING_EVENT_DRIVEN)
        await setup.set_job_event_rates(client, stack.owner, blueprint_id, {0: CHAT_RATE})
        operators = [await fresh_operator(client, stack) for _ in range(OPERATORS)]
        for i, op in enumerate(operators):
            offer = offer_of(i)
            await setup.register_operator(client, op, blueprint_id, offer.endpoint, encode_offer(offer))
        addresses = [o.address for o in operators]
        request_id = await setup.request_service(client, stack.owner, blueprint_id, addresses)
        service_id = None
        for op in operators:
            service_id = await setup.approve_service(client, op, request_id) or service_id
        assert service_id is not None
        return Wide(manager, blueprint_id, service_id, operators)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def wide(stack: Stack) -> Iterator[Wide]:
    yield asyncio.run(_build(stack))


def chat(model: str, max_tokens: int) -> bytes:
    return encode(["string", "uint32", "string"], [model, max_tokens, '{"messages":[]}'])


async def _rejected(client: ChainClient, stack: Stack, wide: Wide, job: int, inputs: bytes, value: int):
    with pytest.raises(TxRevertedError) as info:
        await setup.submit_job(client, stack.owner, wide.service_id, job, inputs, value=value)
    assert info.value.revert.name == "ManagerReverted"
    return explain_revert(info.value.revert)


async def test_flat_rate_job_must_cover_max_tokens_at_the_cheapest_able_operator(
        stack: Stack, wide: Wide, client: ChainClient) -> None:
    mgr = manager_contract(client.w3, wide.manager).functions
    for max_tokens in (0, 1, 64, 65, 250, 251, 1024):
        assert await mgr.jobPaymentFloor(wide.service_id, MODEL, max_tokens).call() == floor_of(max_tokens)
    # 250 tokens: operators 3.. can serve them, the cheapest at 4e11: 1e14, exactly the rate.
    assert floor_of(250) == CHAT_RATE
    call_id = await setup.submit_job(client, stack.owner, wide.service_id, 0, chat(MODEL, 250),
                                     value=CHAT_RATE)
    job = await client.get_job_call(wide.service_id, call_id)
    assert job.payment == CHAT_RATE and not job.is_rfq
    # One token more needs 251 x 4e11 > the rate: rejected, with what was paid and what is needed.
    revert = await _rejected(client, stack, wide, 0, chat(MODEL, 251), CHAT_RATE)
    assert (revert.name, revert.args) == ("PaymentBelowFloor", (wide.service_id, CHAT_RATE, floor_of(251)))
    # Job 1 has no rate here: a flat-rate service paying nothing for tokens is rejected too...
    revert = await _rejected(client, stack, wide, 1, chat(MODEL, 1), 0)
    assert (revert.name, revert.args) == ("PaymentBelowFloor", (wide.service_id, 0, GWEI_100))
    # ...while embeddings (maxTokens 0) cost nothing per token and pass.
    await setup.submit_job(client, stack.owner, wide.service_id, 2, chat(MODEL, 0))


async def test_pay_once_service_is_not_asked_to_pay_per_job(stack: Stack, client: ChainClient) -> None:
    # The shared stack's blueprint is paid once: jobs carry no payment and are accepted.
    call_id = await setup.submit_job(client, stack.owner, stack.service_id, 0, chat(MODEL, 1024))
    assert (await client.get_job_call(stack.service_id, call_id)).payment == 0


async def _quote_job(client: ChainClient, stack: Stack, wide: Wide, op: Operator, inputs: bytes, price: int):
    now = (await client.w3.eth.get_block("latest"))["timestamp"]
    details = JobQuoteDetails(requester=stack.owner.address, service_id=wide.service_id, job_index=0,
                              price=price, timestamp=now, expiry=now + 600, inputs_hash=inputs_hash(inputs))
    quote = sign_job_quote(op.account, details, chain_id=await client.w3.eth.chain_id, tangle=TANGLE)
    fn = client.tangle.functions.submitJobFromQuote(wide.service_id, 0, inputs, [quote.as_tuple()])
    return await client.send(stack.owner.account, fn, value=price)


async def test_quote_paid_job_needs_a_quoted_operator_offering_the_model(
        stack: Stack, wide: Wide, client: ChainClient) -> None:
    mgr = manager_contract(client.w3, wide.manager).functions
    first, second = wide.operators[0], wide.operators[1]
    # The quote path prices per token from the operator's own offer (no flat-rate floor applies).
    price = await mgr.quotePrice(first.address, ONLY_FIRST, 10, 100).call()
    assert price == 10 * GWEI_100 + 100 * GWEI_100
    await _quote_job(client, stack, wide, first, chat(ONLY_FIRST, 100), price)
    with pytest.raises(TxRevertedError) as info:
        await _quote_job(client, stack, wide, second, chat(ONLY_FIRST, 99), price)
    revert = explain_revert(info.value.revert)
    assert revert.name == "ModelNotOfferedByQuotedOperators"
    assert revert.args[0] == wide.service_id and revert.args[2] == ONLY_FIRST
    with pytest.raises(TxRevertedError) as info:
        await client.call(mgr.quotePrice(second.address, ONLY_FIRST, 1, 1))
    assert explain_revert(info.value.revert).name == "OperatorDoesNotOffer"


def _frame_gas(trace: dict, manager: str, selector: str) -> list[int]:
    found = []
    stack = [trace]
    while stack:
        frame = stack.pop()
        if frame.get("to", "").lower() == manager.lower() and frame.get("input", "").startswith(selector):
            found.append(int(frame["gasUsed"], 16))
        stack.extend(frame.get("calls", []))
    return found


async def test_on_job_call_gas_with_16_operators(stack: Stack, wide: Wide, client: ChainClient) -> None:
    mgr = manager_contract(client.w3, wide.manager)
    on_job_call = "0x" + mgr.get_function_by_name("onJobCall")(0, 0, 0, b"")._encode_transaction_data()[2:10]
    # Accepted flat-rate job: membership (16), every operator's terms, the call record.
    receipt = await client.send(stack.owner.account, client.tangle.functions.submitJob(
        wide.service_id, 0, chat(MODEL, 64)), value=CHAT_RATE)
    trace = stack.anvil.rpc("debug_traceTransaction",
                            [receipt.tx_hash, {"tracer": "callTracer"}])
    accepted = _frame_gas(trace, wide.manager, on_job_call)
    # The longest path: nothing paid per job, so the service's pricing model is read as well
    # (a pay-once service takes it; this flat-rate one rejects it). Traced as Tangle's own call.
    free_call = await setup.submit_job(client, stack.owner, wide.service_id, 2, chat(MODEL, 0))
    hook = mgr.functions.onJobCall(wide.service_id, 0, free_call, chat(MODEL, 1024))
    data = hook._encode_transaction_data()
    traced = stack.anvil.rpc("debug_traceCall", [{"from": TANGLE, "to": wide.manager, "data": data,
                                                  "gas": hex(500_000)}, "latest", {"tracer": "callTracer"}])
    assert "PaymentBelowFloor" in str(explain_revert_of(traced)), traced.get("error")
    longest = int(traced["gasUsed"], 16)
    print({"onJobCall_accepted_16_ops": accepted, "onJobCall_pricing_read_16_ops": longest})
    assert accepted and max(accepted) < 150_000
    assert longest < 150_000


def explain_revert_of(frame: dict) -> object:
    from blueprint.contracts.manager import decode_manager_error

    output = frame.get("output", "0x")
    return decode_manager_error(bytes.fromhex(output[2:])) if output and output != "0x" else None
