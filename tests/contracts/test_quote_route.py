"""``POST /v1/quote`` on anvil with the real TNT Core contracts and our manager: the quote prices
the prompt with the model's tokenizer (or the documented estimate for a remote node), is signed by
the operator, is accepted by ``submitJobFromQuote`` at exactly its price, and matches what
``python -m blueprint submit --quote`` expects; bad requests are refused before anything is
signed, and an API without an operator key answers 503."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blueprint.balancer import Balancer
from blueprint.client import BlueprintClient
from blueprint.commands.submit import fetch_quote
from blueprint.config import Settings
from blueprint.contracts.offer import offer_from_nodes
from blueprint.jobs.codec import JobInputs, encode_inputs
from blueprint.jobs.handlers import prepare_chat
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.llm.types import ChatMessage
from blueprint.quoting.quoter import ESTIMATE_TOKENS_PER_PROMPT, estimate_tokens, quotes_from_settings
from blueprint.server import ServerSettings, create_app
from blueprint.server.app import BALANCER_KEY
from blueprint.server.quote_route import enable_quotes
from blueprint.tangle.chain import ChainClient, TxRevertedError
from blueprint.tangle.quotes import SignedJobQuote, inputs_hash, recover_quote_signer
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from tests.contracts.conftest import OFFER_A, TANGLE, Stack

pytestmark = pytest.mark.chain

MODEL = "tiny-llama"  # OFFER_A of operator 0: 1 gwei per prompt token, 2 gwei per completion token
TERMS = OFFER_A.models[0]
PRICES = {"price_per_prompt_token_wei": TERMS.price_per_prompt_token,
          "price_per_completion_token_wei": TERMS.price_per_completion_token}
CHAT = {"messages": [{"role": "user", "content": "How much is a quote for this prompt?"}]}


async def _quote_client(stack: Stack, client: ChainClient, node: NodeConfig,
                        server: ServerSettings | None = None) -> AsyncIterator[TestClient]:
    settings = Settings(nodes=[node], service_id=stack.service_id, tangle_contract=TANGLE)
    balancer = Balancer([create_client(node)], settings.balancer,
                        node_configs={node.node_name: node})
    await balancer.start()
    try:
        app = create_app(balancer, server or ServerSettings())
        quoter = quotes_from_settings(settings, balancer, stack.operators[0].account,
                                      await client.w3.eth.chain_id)
        assert quoter is not None
        enable_quotes(app, quoter)
        async with TestClient(TestServer(app)) as http:
            yield http
    finally:
        await balancer.close()


@pytest.fixture
async def api(stack: Stack, client: ChainClient, tiny_model_dir: Path) -> AsyncIterator[TestClient]:
    node = NodeConfig(engine="transformers", model=MODEL, path=str(tiny_model_dir), device="cpu",
                      max_batch_size=2, max_output_tokens=TERMS.max_output_tokens, options=PRICES)
    async for http in _quote_client(stack, client, node):
        yield http


def _body(stack: Stack, **overrides: Any) -> dict[str, Any]:
    return {"job_index": 0, "model": MODEL, "max_tokens": 16, "request": CHAT,
            "requester": stack.owner.address, **overrides}


async def test_quote_prices_with_the_tokenizer_and_is_accepted_on_chain(
        stack: Stack, client: ChainClient, api: TestClient) -> None:
    resp = await api.post("/v1/quote", json=_body(stack))
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["token_count"] == "tokenizer"
    # The count is what the engine reports as usage when it runs this very request.
    balancer = api.server.app[BALANCER_KEY]  # type: ignore[attr-defined]
    ran = await balancer.chat(prepare_chat(JobInputs(MODEL, 16, json.dumps(CHAT))))
    expected_prompt = ran.usage.prompt_tokens
    assert data["prompt_tokens"] == expected_prompt > 0 and data["completion_tokens"] == 16
    price = expected_prompt * TERMS.price_per_prompt_token + 16 * TERMS.price_per_completion_token
    assert data["price_wei"] == str(price)
    quote = SignedJobQuote.from_json(data["quote"])
    inputs = encode_inputs(MODEL, 16, CHAT)
    assert bytes.fromhex(data["inputs"][2:]) == inputs and quote.details.inputs_hash == inputs_hash(inputs)
    assert quote.details.price == price and quote.details.service_id == stack.service_id
    assert quote.details.requester == stack.owner.address
    assert quote.details.expiry - quote.details.timestamp == 300
    chain_id = await client.w3.eth.chain_id
    assert recover_quote_signer(quote, chain_id=chain_id, tangle=TANGLE) == stack.operators[0].address

    bp = BlueprintClient(client, stack.service_id)
    call_id = await bp.submit(stack.owner.account, 0, MODEL, 16, CHAT, quote=quote, inputs=inputs)
    job = await client.get_job_call(stack.service_id, call_id)
    assert job.is_rfq and job.payment == price

    # The same request again (same second): a fresh quote, not a used digest.
    again = SignedJobQuote.from_json((await (await api.post("/v1/quote", json=_body(stack))).json())["quote"])
    assert again.details != quote.details
    assert await bp.submit(stack.owner.account, 0, MODEL, 16, CHAT, quote=again, inputs=inputs) > call_id
    # A quote is single use: paying it twice is refused by Tangle.
    with pytest.raises(TxRevertedError) as info:
        await bp.submit(stack.owner.account, 0, MODEL, 16, CHAT, quote=again, inputs=inputs)
    assert info.value.revert.name == "QuoteAlreadyUsed"


async def test_submit_command_helper_reads_the_route(stack: Stack, client: ChainClient,
                                                     api: TestClient) -> None:
    completion = {"prompt": ["one prompt", "and another"]}
    quote = await fetch_quote(str(api.make_url("")), job_index=1, model=MODEL, max_tokens=8,
                              request=completion, requester=stack.owner.address, timeout=10)
    assert quote.details.job_index == 1
    assert quote.details.inputs_hash == inputs_hash(encode_inputs(MODEL, 8, completion))
    call_id = await BlueprintClient(client, stack.service_id).submit(
        stack.owner.account, 1, MODEL, 8, completion, quote=quote)
    assert (await client.get_job_call(stack.service_id, call_id)).payment == quote.details.price


@pytest.mark.parametrize(("overrides", "status", "code"), [
    ({"model": "no-such-model"}, 404, "model_not_found"),
    ({"max_tokens": TERMS.max_output_tokens + 1}, 400, "max_tokens_above_limit"),
    ({"service_id": 999}, 400, "wrong_service"),
    ({"requester": "0x1234"}, 400, "invalid_request"),
    ({"job_index": 5}, 400, "invalid_request"),
    ({"max_tokens": 3, "request": {**CHAT, "n": 4}}, 400, "max_tokens_exceeds_paid"),
    ({"request": {**CHAT, "max_tokens": "17"}}, 400, "invalid_request"),
    ({"request": {"messages": "not a list"}}, 400, "invalid_request"),
])
async def test_bad_requests_are_refused(stack: Stack, api: TestClient, overrides: dict[str, Any],
                                        status: int, code: str) -> None:
    resp = await api.post("/v1/quote", json=_body(stack, **overrides))
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["code"] == code


#: The tiny model's real context (``max_position_embeddings``); the node declares none, so offers
#: and quotes must read it from the loaded model, not the 2048 default.
TINY_CONTEXT = 512
LONG = {"messages": [{"role": "user", "content": "word " * 600}]}
MEDIUM = {"messages": [{"role": "user", "content": "word " * 300}]}


@pytest.mark.parametrize(("overrides", "status", "code"), [
    ({"max_tokens": TINY_CONTEXT + 1}, 400, "max_tokens_above_limit"),  # under the 1024 declared cap
    ({"request": LONG}, 413, "context_length_exceeded"),
    ({"request": MEDIUM, "max_tokens": 300}, 413, "context_length_exceeded"),
    ({"job_index": 1, "request": {"prompt": ["short", "word " * 600]}, "max_tokens": 8}, 413,
     "context_length_exceeded"),
    ({"job_index": 2, "max_tokens": 0, "request": {"input": ["ok", "word " * 600]}}, 413,
     "context_length_exceeded"),
])
async def test_quotes_are_refused_for_what_the_loaded_model_cannot_serve(
        stack: Stack, api: TestClient, overrides: dict[str, Any], status: int, code: str) -> None:
    """Issue 11 row 5: nothing is signed (and so nothing paid) for a job that could only be
    answered with ``context_length_exceeded``."""
    resp = await api.post("/v1/quote", json=_body(stack, **overrides))
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["code"] == code


async def test_the_offer_reads_the_loaded_models_limits(stack: Stack, client: ChainClient,
                                                       tiny_model_dir: Path) -> None:
    node = NodeConfig(engine="transformers", model=MODEL, path=str(tiny_model_dir), device="cpu",
                      options=PRICES)
    balancer = Balancer([create_client(node)], node_configs={node.node_name: node})
    await balancer.start()
    try:
        settings = Settings(nodes=[node], service_id=stack.service_id, tangle_contract=TANGLE)
        quoter = quotes_from_settings(settings, balancer, stack.operators[0].account, 31337)
        assert quoter is not None
        terms = quoter.offer.model(MODEL)
        assert terms is not None
        assert (terms.context_length, terms.max_output_tokens) == (TINY_CONTEXT, TINY_CONTEXT)
    finally:
        await balancer.close()
    declared = offer_from_nodes([node], "http://x").model(MODEL)  # register: before any load
    assert declared is not None and declared.context_length == TINY_CONTEXT


async def test_remote_node_prices_by_the_estimate(stack: Stack, client: ChainClient) -> None:
    async with EmulatedBackend(EmulatedOptions(model=MODEL, trivial=True)) as backend:
        node = NodeConfig(name="remote", engine="openai", model=MODEL, base_url=backend.base_url,
                          options=PRICES)
        async for http in _quote_client(stack, client, node):
            resp = await http.post("/v1/quote", json=_body(stack, job_index=1, max_tokens=4,
                                                            request={"prompt": "x" * 100}, ttl_s=60))
            data = await resp.json()
    assert resp.status == 200, data
    assert data["token_count"] == "estimate" and data["prompt_tokens"] == 100 + ESTIMATE_TOKENS_PER_PROMPT
    details = data["quote"]["details"]
    assert details["expiry"] - details["timestamp"] == 60
    assert int(details["price"]) == (data["prompt_tokens"] * TERMS.price_per_prompt_token
                                     + 4 * TERMS.price_per_completion_token)
    assert estimate_tokens("é" * 3) == 6 + ESTIMATE_TOKENS_PER_PROMPT  # bytes, not characters


async def test_without_an_operator_key_the_route_answers_503() -> None:
    app = create_app(Balancer([]), ServerSettings())
    async with TestClient(TestServer(app)) as http:
        resp = await http.post("/v1/quote", json={"job_index": 0})
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "quotes_disabled"
        doc = await (await http.get("/openapi.json")).json()
    op = doc["paths"]["/v1/quote"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QuoteRequest")
    assert {"200", "400", "404", "503"} <= set(op["responses"])


async def test_quotes_are_rate_limited_per_client_and_size_bounded(stack: Stack, client: ChainClient) -> None:
    """Row 6: ``/v1/quote`` needs no key, so 4 clients posting 900 KB bodies slowed every chat
    from 0.055 s to 3.8 s. Quotes have their own body bound and a token bucket per client
    address."""
    async with EmulatedBackend(EmulatedOptions(model=MODEL, trivial=True)) as backend:
        node = NodeConfig(name="remote", engine="openai", model=MODEL, base_url=backend.base_url,
                          options=PRICES)
        server = ServerSettings(quote_rate_per_minute=60, quote_burst=5, quote_max_body_bytes=16_384)
        async for http in _quote_client(stack, client, node, server):
            big = _body(stack, request={"messages": [{"role": "user", "content": "x" * 20_000}]})
            too_big = await http.post("/v1/quote", json=big)
            assert too_big.status == 413 and (await too_big.json())["error"]["code"] == "request_too_large"
            statuses = [(await http.post("/v1/quote", json=_body(stack))).status for _ in range(8)]
            assert statuses[:4] == [200] * 4 and statuses[-1] == 429, statuses
            limited = await http.post("/v1/quote", json=_body(stack))
            assert (await limited.json())["error"]["code"] == "rate_limit_exceeded"
            assert "Retry-After" in limited.headers


async def test_the_estimate_errs_in_the_operators_favour(stack: Stack, client: ChainClient,
                                                        tiny_model_dir: Path) -> None:
    """Row 6: for a node without a tokenizer the estimate (bytes / 3) was gamed: 2,010 tokens
    quoted for 3,005 counted. Whatever the text, the estimate is at least the real count."""
    node = NodeConfig(engine="transformers", model=MODEL, path=str(tiny_model_dir), device="cpu")
    tokenizer_node = create_client(node)
    await tokenizer_node.start()
    try:
        for text in ("\u4e00\u4e8c\u4e09\u56db" * 50, "0123456789" * 40, "\U0001f600" * 60, "a b " * 90,
                     "".join(chr(c) for c in range(0x100, 0x300))):
            messages = [ChatMessage(role="system", content="s"), ChatMessage(role="user", content=text)]
            for prompt in (text, messages):
                counted = await tokenizer_node.count_tokens(prompt)
                assert counted is not None and estimate_tokens(prompt) >= counted, (text[:20], counted)
    finally:
        await tokenizer_node.close()
