"""EIP-712 job quotes signed in Python are accepted by the real Tangle contract; expired,
tampered or re-bound ones are rejected."""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import encode

from blueprint.contracts.manager import explain_revert
from blueprint.tangle import abi
from blueprint.tangle.chain import ChainClient, TxRevertedError, logs_with_topic
from blueprint.tangle.quotes import JobQuoteDetails, SignedJobQuote, inputs_hash, sign_job_quote
from tests.contracts.conftest import TANGLE, Stack

pytestmark = pytest.mark.chain
PRICE = 10**15


def _inputs(max_tokens: int = 64) -> bytes:
    return encode(["string", "uint32", "string"], ["tiny-llama", max_tokens, '{"messages":[]}'])


async def _quote(client: ChainClient, stack: Stack, inputs: bytes, *, ttl: int = 600,
                 price: int = PRICE) -> SignedJobQuote:
    now = (await client.w3.eth.get_block("latest"))["timestamp"]
    details = JobQuoteDetails(requester=stack.owner.address, service_id=stack.service_id, job_index=0,
                              price=price, timestamp=now, expiry=now + ttl, inputs_hash=inputs_hash(inputs))
    return sign_job_quote(stack.operators[0].account, details, chain_id=await client.w3.eth.chain_id,
                          tangle=TANGLE)


async def _submit(client: ChainClient, stack: Stack, inputs: bytes, quote: SignedJobQuote,
                  value: int = PRICE) -> dict:
    fn = client.tangle.functions.submitJobFromQuote(stack.service_id, 0, inputs, [quote.as_tuple()])
    return await client.send(stack.owner.account, fn, value=value)


async def test_valid_quote_is_accepted(stack: Stack, client: ChainClient) -> None:
    inputs = _inputs()
    quote = await _quote(client, stack, inputs)
    assert SignedJobQuote.from_json(quote.to_json()) == quote
    receipt = await _submit(client, stack, inputs, quote)
    logs = logs_with_topic(receipt, abi.JOB_SUBMITTED_FROM_QUOTE_TOPIC, TANGLE)
    assert len(logs) == 1
    call_id = int(logs[0].topics[2], 16)
    job = await client.get_job_call(stack.service_id, call_id)
    assert job.is_rfq and job.payment == PRICE
    # Single use.
    with pytest.raises(TxRevertedError) as info:
        await _submit(client, stack, inputs, quote)
    assert info.value.revert.name == "QuoteAlreadyUsed"


@pytest.mark.parametrize("case", ["expired", "tampered_price", "other_inputs", "over_limit"])
async def test_bad_quotes_are_rejected(stack: Stack, client: ChainClient, case: str) -> None:
    inputs = _inputs()
    expected = {"expired": "QuoteExpired", "tampered_price": "InvalidQuoteSignature",
                "other_inputs": "JobQuoteInputsMismatch", "over_limit": "MaxTokensAboveLimit"}[case]
    value = PRICE
    if case == "expired":
        quote = await _quote(client, stack, inputs, ttl=-1)
    elif case == "tampered_price":
        quote = await _quote(client, stack, inputs)
        quote = dataclasses.replace(quote, details=dataclasses.replace(quote.details, price=PRICE // 2))
        value = PRICE // 2
    elif case == "other_inputs":
        quote = await _quote(client, stack, inputs)
        inputs = _inputs(65)
    else:  # a correctly signed quote for a job the manager rejects in onJobCall
        inputs = _inputs(10_000)
        quote = await _quote(client, stack, inputs)
    with pytest.raises(TxRevertedError) as info:
        await _submit(client, stack, inputs, quote, value)
    assert explain_revert(info.value.revert).name == expected
