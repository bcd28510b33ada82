"""The offer book: a service's offers read from our manager's views, read again when the manager
emits an offer event, and the no-manager fallback (every operator of the service, any model)."""

from __future__ import annotations

import asyncio
import time

import pytest

from blueprint.contracts.manager import manager_contract
from blueprint.contracts.offer import ModelOffer, Offer, encode_offer
from blueprint.contracts.offer_book import AnyModel, OfferBook
from blueprint.tangle.chain import ChainClient
from tests.contracts.conftest import OFFER_A, OFFER_B, Stack

pytestmark = pytest.mark.chain


async def test_offers_follow_the_managers_events(stack: Stack, client: ChainClient) -> None:
    a, b = (op.address for op in stack.operators)
    book = await OfferBook.for_service(client, stack.service_id, poll_interval_s=0.1, refresh_s=3600)
    seen: list[int] = []
    book.on_change(lambda current: seen.append(current.version))
    await book.start()
    try:
        assert book.manager == stack.manager
        assert book.models_by_operator() == {a: frozenset({"tiny-llama"}),
                                             b: frozenset({"tiny-llama", "tiny-embed"})}
        assert book.completion_prices("tiny-llama") == {a: OFFER_A.models[0].price_per_completion_token,
                                                        b: OFFER_B.models[0].price_per_completion_token}
        assert book.offer_of(a.lower()) == OFFER_A and seen == [1]
        bigger = Offer(OFFER_A.endpoint, (*OFFER_A.models, ModelOffer("tiny-new", 1024, 64, 1, 1)))
        mgr = manager_contract(client.w3, stack.manager).functions
        await client.send(stack.operators[0].account, mgr.updateOffer(encode_offer(bigger)))
        deadline = time.monotonic() + 10
        while "tiny-new" not in book.models_by_operator()[a]:  # the OfferUpdated event, not a timer
            assert time.monotonic() < deadline, "the book did not follow the offer event"
            await asyncio.sleep(0.05)
        assert seen == [1, 2] and book.offer_of(a) == bigger
    finally:
        await client.send(stack.operators[0].account, manager_contract(client.w3, stack.manager).functions
                          .updateOffer(encode_offer(OFFER_A)))
        await book.stop()


async def test_without_a_manager_every_member_may_serve_any_model(stack: Stack, client: ChainClient) -> None:
    book = OfferBook(client, stack.service_id, "0x" + "00" * 20)
    await book.refresh()
    models = book.models_by_operator()
    assert set(models) == {op.address for op in stack.operators}
    assert all(isinstance(m, AnyModel) and "anything" in m for m in models.values())
    assert book.offer_of(stack.operators[0].address) is None
